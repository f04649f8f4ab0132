//! The change feed: every committed change of a user as an event, in pages and as a stream
//! that resumes exactly, on one instance and across several.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestDb, acknowledged, assert_problem, kill9_under_creates, spawn_app, spawn_app_with,
    start,
};

/// A Server-Sent Events client: what the stream sent, frame by frame.
struct Sse {
    body: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: String,
}

/// One frame: the fields it carried (`id`, `event`, `data`, `retry`, and `:` for a comment).
#[derive(Debug, Default, Clone)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    comment: Option<String>,
}

impl Sse {
    /// Opens `GET /api/v1/events/stream{query}` with `key`, resuming after `last_event_id`.
    async fn open(app: &TestApp, key: &str, query: &str, last_event_id: Option<i64>) -> Sse {
        let response = Self::request(app, key, query, last_event_id).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut sse = Sse {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        };
        let start = sse.frame().await.expect("a first frame");
        assert!(start.id.is_some() && start.data.is_none(), "{start:?}");
        sse
    }

    async fn request(
        app: &TestApp,
        key: &str,
        query: &str,
        last_event_id: Option<i64>,
    ) -> reqwest::Response {
        let mut request = app
            .client
            .get(app.url(&format!("/api/v1/events/stream{query}")))
            .bearer_auth(key);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        request.send().await.unwrap()
    }

    /// The next frame, `None` once the stream has ended; fails after 30 s without one.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame::default();
                for line in text.lines().filter(|line| !line.is_empty()) {
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    let value = Some(value.to_owned());
                    match field {
                        "id" => frame.id = value,
                        "event" => frame.event = value,
                        "data" => frame.data = value,
                        "" => frame.comment = value,
                        "retry" => {}
                        other => panic!("unexpected field {other:?} in {text:?}"),
                    }
                }
                return Some(frame);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("the stream sent nothing for 30 s")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }

    /// The next `count` events, their `id:` and `event:` lines checked against their data.
    async fn events(&mut self, count: usize) -> Vec<Value> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            let frame = self.frame().await.expect("the stream ended early");
            let Some(data) = frame.data else { continue };
            let event: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(frame.id.unwrap(), event["id"].to_string());
            assert_eq!(frame.event.as_deref(), event["type"].as_str());
            events.push(event);
        }
        events
    }
}

/// `GET /api/v1/events{query}`, which must answer a page.
async fn page(app: &TestApp, query: &str) -> Value {
    let response = app
        .request(Method::GET, &format!("/api/v1/events{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{query}");
    response.json().await.unwrap()
}

/// Every event after `after`, read page by page.
async fn all_events(app: &TestApp, after: i64) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = after;
    loop {
        let page = page(app, &format!("?after={after}&limit=1000")).await;
        let items = page["items"].as_array().unwrap();
        events.extend(items.iter().cloned());
        after = page["next_after"].as_i64().unwrap();
        if !page["has_more"].as_bool().unwrap() {
            return events;
        }
    }
}

/// Every event after `after`, once there are `count`: on PostgreSQL an event is numbered a
/// moment after its write is answered.
async fn events_once_numbered(app: &TestApp, after: i64, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = all_events(app, after).await;
        if events.len() >= count {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} events",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn creates_updates_and_deletes_are_events_with_the_user_after_the_change() {
    let app = spawn_app().await;
    let mut stream = Sse::open(&app, &app.key, "", None).await;
    let created = app
        .create_ok(&json!({"name": "Ann", "role": "Dev", "email": "ann@example.org"}))
        .await;
    let id = created["id"].as_i64().unwrap();
    let replaced: Value = app
        .replace_user(id, &json!({"name": "Ann", "role": "Lead"}))
        .await
        .json()
        .await
        .unwrap();
    let patched: Value = app
        .update_user(id, &json!({"name": "Anna"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(app.delete_user(id).await.status(), 204);

    let events = stream.events(4).await;
    let kinds: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "user.created",
            "user.updated",
            "user.updated",
            "user.deleted"
        ]
    );
    assert_eq!(events[0]["user"], created);
    assert_eq!(events[1]["user"], replaced);
    assert_eq!(events[2]["user"], patched);
    assert_eq!(events[3]["user"], Value::Null);
    for event in &events {
        assert_eq!(event["user_id"], id);
        assert_eq!(event["actor"], "api-key:1");
        assert!(event["created_at"].as_str().unwrap().ends_with("+00:00"));
    }
    let ids = ids(&events);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // The pages tell the same, from the oldest event by default.
    let first = page(&app, "").await;
    assert_eq!(first["items"], json!(events));
    assert_eq!(first["next_after"], ids[3]);
    assert_eq!(first["has_more"], false);
    let one = page(&app, &format!("?after={}&limit=1", ids[0])).await;
    assert_eq!(one["items"], json!([events[1]]));
    assert_eq!(one["has_more"], true);
    // One type only, in pages and in a stream.
    let deleted = page(&app, "?type=user.deleted").await;
    assert_eq!(deleted["items"], json!([events[3]]));
    let mut only_deleted = Sse::open(&app, &app.key, "?type=user.deleted&after=0", None).await;
    assert_eq!(only_deleted.events(1).await, [events[3].clone()]);
}

#[tokio::test]
async fn a_stream_resumes_after_last_event_id_with_exactly_what_it_missed() {
    let app = spawn_app().await;
    let mut stream = Sse::open(&app, &app.key, "", None).await;
    let first = app
        .create_ok(&json!({"name": "First", "role": "Dev"}))
        .await;
    let seen = stream.events(1).await;
    assert_eq!(seen[0]["user"], first);
    drop(stream);

    let mut made = Vec::new();
    for i in 0..100 {
        let user = app
            .create_ok(&json!({"name": format!("Away {i}"), "role": "Dev"}))
            .await;
        made.push(user);
    }
    let last_seen = seen[0]["id"].as_i64().unwrap();
    // `?after=` is what the client first asked for; `Last-Event-ID` wins, as on a reconnect.
    let mut resumed = Sse::open(&app, &app.key, "?after=0", Some(last_seen)).await;
    let missed = resumed.events(100).await;
    let users: Vec<_> = missed.iter().map(|e| e["user"].clone()).collect();
    assert_eq!(users, made, "exactly the 100 changes, in order");
    assert_eq!(ids(&missed), ids(&all_events(&app, last_seen).await));
    // Then live, with nothing repeated at the switch.
    let live = app.create_ok(&json!({"name": "Live", "role": "Dev"})).await;
    let next = resumed.events(1).await;
    assert_eq!(next[0]["user"], live);
    assert_eq!(
        next[0]["id"].as_i64().unwrap(),
        missed[99]["id"].as_i64().unwrap() + 1
    );
}

#[tokio::test]
async fn writes_that_fail_or_roll_back_leave_no_event() {
    let app = spawn_app().await;
    let ann = app
        .create_ok(&json!({"name": "Ann", "role": "Dev", "email": "ann@example.org"}))
        .await;
    let id = ann["id"].as_i64().unwrap();
    let before = events_once_numbered(&app, 0, 1).await;
    assert_eq!(before.len(), 1);

    let taken = app
        .create_user(&json!({"name": "Bob", "role": "Dev", "email": "ANN@example.org"}))
        .await;
    assert_problem(taken, 409).await;
    let stale = app
        .request(Method::PATCH, &format!("/api/v1/users/{id}"))
        .header("If-Match", "\"u1-v9\"")
        .json(&json!({"role": "Lead"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    assert_problem(app.delete_user(id + 100).await, 404).await;
    let invalid = app.create_user(&json!({"name": "", "role": "Dev"})).await;
    assert_problem(invalid, 422).await;
    // Once a later write's event is in the feed, any event of those would be too.
    let later = app
        .create_ok(&json!({"name": "Later", "role": "Dev"}))
        .await;
    let after = events_once_numbered(&app, 0, 2).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1]["user"], later);
}

/// Two instances; the one taking the writes is killed mid-load; the other's feed has every
/// acknowledged write.
#[tokio::test]
async fn every_acknowledged_write_is_in_the_feed_after_kill_9() {
    let unlimited = ["--rate-limit", "0"];
    let writer = spawn_app_with(&unlimited).await;
    let app = start(writer.db.clone(), writer.key.clone(), &unlimited).await;
    let (_, _, acknowledged) = kill9_under_creates(writer).await;
    // On PostgreSQL, the killed instance may have left events committed but not yet numbered:
    // the other numbers them within its sweep (a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = all_events(&app, 0).await;
        let created: std::collections::HashMap<i64, &Value> = events
            .iter()
            .filter(|e| e["type"] == "user.created")
            .map(|e| (e["user_id"].as_i64().unwrap(), &e["user"]))
            .collect();
        let missing = acknowledged
            .iter()
            .filter(|user| created.get(&user["id"].as_i64().unwrap()) != Some(user))
            .count();
        if missing == 0 {
            let ids = ids(&events);
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} acknowledged creates have no event",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_position_past_the_retention_is_gone_and_says_how_to_resync() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.create_ok(&json!({"name": format!("Old {i}"), "role": "Dev"}))
            .await;
    }
    events_once_numbered(&app, 0, 3).await;
    let (db, key) = (app.db.clone(), app.key.clone());
    assert!(app.stop().success());
    db.execute("UPDATE user_events SET created_at = '2000-01-01 00:00:00+00:00' WHERE id <= 2")
        .await;
    // Pruning runs as the server starts.
    let app = start(db, key, &[]).await;
    let newer = app.create_ok(&json!({"name": "New", "role": "Dev"})).await;
    events_once_numbered(&app, 2, 2).await;
    let gone = app
        .request(Method::GET, "/api/v1/events?after=1")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(gone, 410).await;
    assert_eq!(problem["type"], "urn:users-api:problem:events-expired");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("list the users again"),
        "{problem}"
    );
    let resumed = Sse::request(&app, &app.key, "", Some(0)).await;
    assert_problem(resumed, 410).await;
    // From the pruned edge on, and by default, the feed is whole.
    let kept = all_events(&app, 2).await;
    assert_eq!(ids(&kept), [3, 4]);
    assert_eq!(kept[1]["user"], newer);
    let oldest = page(&app, "").await;
    assert_eq!(ids(oldest["items"].as_array().unwrap()), [3, 4]);
    // A position ahead of every event is from another database: also a resync.
    let ahead = app
        .request(Method::GET, "/api/v1/events?after=99")
        .send()
        .await
        .unwrap();
    assert_problem(ahead, 410).await;
}

#[tokio::test]
async fn streams_are_limited_per_caller_and_per_server_and_need_users_read() {
    let app = spawn_app_with(&["--max-streams", "2", "--max-streams-per-principal", "1"]).await;
    let (_, other) = app.db.create_key(&["users:read"]);
    let (_, writer_only) = app.db.create_key(&["users:write"]);
    let first = Sse::open(&app, &app.key, "", None).await;
    let refused = Sse::request(&app, &app.key, "", None).await;
    let problem = assert_problem(refused, 429).await;
    assert_eq!(problem["type"], "urn:users-api:problem:too-many-streams");
    let second = Sse::open(&app, &other, "", None).await;
    let (_, third_key) = app.db.create_key(&["users:read"]);
    let full = Sse::request(&app, &third_key, "", None).await;
    assert_eq!(full.headers()["retry-after"], "5");
    assert_problem(full, 503).await;
    // A stream whose client hangs up gives its slot back at once, not at its next write (a
    // heartbeat, 15 s away).
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let response = Sse::request(&app, &third_key, "", None).await;
        if response.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);

    let anonymous = app
        .client
        .get(app.url("/api/v1/events/stream"))
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, 401).await;
    let forbidden = Sse::request(&app, &writer_only, "", None).await;
    assert_problem(forbidden, 403).await;
    let page = app
        .client
        .get(app.url("/api/v1/events"))
        .bearer_auth(&writer_only)
        .send()
        .await
        .unwrap();
    assert_problem(page, 403).await;
    let bad_id = app
        .client
        .get(app.url("/api/v1/events/stream"))
        .bearer_auth(&app.key)
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(bad_id, 400).await;
    assert_eq!(
        problem["errors"][0]["message"], "must be an integer of at least 0",
        "{problem}"
    );
}

#[tokio::test]
async fn a_stream_outlives_the_idle_timeout_and_ends_cleanly_on_shutdown() {
    let app = spawn_app_with(&["--idle-timeout-secs", "1"]).await;
    let mut stream = Sse::open(&app, &app.key, "", None).await;
    // Heartbeats keep it open past the idle timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let user = app.create_ok(&json!({"name": "Late", "role": "Dev"})).await;
    assert_eq!(stream.events(1).await[0]["user"], user);
    let stopping = tokio::task::spawn_blocking(move || app.stop());
    let mut last = None;
    while let Some(frame) = stream.frame().await {
        last = Some(frame);
    }
    assert!(stopping.await.unwrap().success());
    let comment = last.and_then(|frame| frame.comment).unwrap_or_default();
    assert!(comment.contains("shutting down"), "{comment:?}");
}

/// Two instances on one database (on SQLite, two processes on one file), four writers making
/// 2,000 changes through both, a subscriber on each: both get every change exactly once, in
/// the same order, and the pages agree.
#[tokio::test]
async fn subscribers_on_two_instances_get_every_change_once_in_one_order() {
    let db = Arc::new(TestDb::new());
    let (_, key) = db.create_key(&["admin"]);
    let unlimited = ["--rate-limit", "0"];
    let a = start(db.clone(), key.clone(), &unlimited).await;
    let b = start(db, key.clone(), &unlimited).await;
    let mut on_a = Sse::open(&a, &key, "", None).await;
    let mut on_b = Sse::open(&b, &key, "", None).await;

    const WRITERS: usize = 4;
    const CHANGES: usize = 2000;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let app = if w % 2 == 0 { &a } else { &b };
            let (client, base, key) = (app.client.clone(), app.base.clone(), key.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut id = 0;
                for i in 0..CHANGES / WRITERS {
                    // Every fourth change of a writer creates a user; the rest rename it.
                    let response = if i % 4 == 0 {
                        client
                            .post(format!("{base}/api/v1/users"))
                            .json(&json!({"name": format!("w{w}-{i}"), "role": "Dev"}))
                    } else {
                        client
                            .patch(format!("{base}/api/v1/users/{id}"))
                            .json(&json!({"name": format!("w{w}-{i}")}))
                    }
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
                    let user: Value = response.json().await.unwrap();
                    id = user["id"].as_i64().unwrap();
                    done.push(user);
                }
                done
            })
        })
        .collect();
    let written = acknowledged(writers).await;
    assert_eq!(written.len(), CHANGES);
    let (from_a, from_b) = tokio::join!(on_a.events(CHANGES), on_b.events(CHANGES));
    assert_eq!(ids(&from_a), ids(&from_b), "one order for every reader");
    assert_eq!(from_a, from_b);
    let paged = all_events(&a, 0).await;
    assert_eq!(paged, from_a, "the pages agree");
    let mut received: Vec<_> = from_a.iter().map(|e| e["user"].clone()).collect();
    let mut expected = written;
    let key = |user: &Value| {
        (
            user["id"].as_i64(),
            user["updated_at"].as_str().map(String::from),
        )
    };
    received.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(received, expected, "every acknowledged change, once");
}

/// A client that opens a stream and then reads nothing is dropped once its connection has
/// taken no bytes for the idle timeout, and writers meanwhile go on at their pace.
#[tokio::test]
async fn a_stalled_stream_is_dropped_and_never_slows_writers() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(&["--idle-timeout-secs", "1", "--rate-limit", "0"]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = app.base.trim_start_matches("http://").parse().unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        app.key
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let open = |metrics: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("users_api_event_streams "))
            .map(|count| count.trim().to_owned())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open(&app.metrics().await).as_deref() != Some("1") {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream did not open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Writes fill the stalled connection's buffers, then go on without it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut written = 0;
    let app = &app;
    loop {
        let batch = (0..50).map(|i| {
            let body = json!({"name": format!("Filler {written} {i}"), "role": "x".repeat(50)});
            async move { app.create_user(&body).await.status() }
        });
        let started = std::time::Instant::now();
        let statuses = futures_util::future::join_all(batch).await;
        assert!(statuses.iter().all(|status| *status == 201));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "writers were held up"
        );
        written += 50;
        if open(&app.metrics().await).as_deref() == Some("0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled stream was still open after {written} writes"
        );
    }
    drop(stalled);
}
