//! The runtime threads: pinned one to a core, and nothing else held to their cores.
#![cfg(target_os = "linux")]

use std::collections::BTreeSet;

use crate::helpers::{TestApp, acknowledged, spawn_app_with, spawn_writers};

/// A thread of the server's: its name and the cores it may run on (`Cpus_allowed_list`).
#[derive(Debug)]
struct Thread {
    name: String,
    cores: String,
}

fn threads(app: &TestApp) -> Vec<Thread> {
    let tasks = format!("/proc/{}/task", app.pid());
    let mut threads = Vec::new();
    for task in std::fs::read_dir(&tasks).unwrap() {
        let dir = task.unwrap().path();
        // A thread can end between the listing and the reads.
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        threads.push(Thread {
            name: name.trim().to_owned(),
            cores: allowed_cores(&status),
        });
    }
    threads
}

/// What the `listening` line says of the runtime threads: how many, and whether pinned.
async fn listening(app: &TestApp) -> (usize, bool) {
    let line = app.listening_line().await;
    (
        line["workers"].as_u64().unwrap() as usize,
        line["pinned"].as_bool().unwrap(),
    )
}

/// The cores the process may use, as the kernel lists them: its main thread's, which never
/// pins itself.
fn process_cores(app: &TestApp) -> String {
    allowed_cores(&std::fs::read_to_string(format!("/proc/{}/status", app.pid())).unwrap())
}

/// The `Cpus_allowed_list` of a `/proc/…/status` file, as the kernel writes it (`0-1`, say).
fn allowed_cores(status: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Writes and listings enough that the server starts threads of its own under load: sqlx
/// opens pool connections (each on a new thread) for concurrent API-key listings, and the
/// write-ahead log's limit of 1 MiB hands checkpoints to tokio's blocking pool. Both kinds are
/// started from runtime threads, and would inherit their pin.
async fn load(app: &TestApp) {
    let listings: Vec<_> = (0..32)
        .map(|_| {
            let request = app.request(reqwest::Method::GET, "/api/v1/api-keys");
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    let created = acknowledged(spawn_writers(app, 16, Some(40))).await;
    for listing in listings {
        assert_eq!(listing.await.unwrap(), 200);
    }
    assert_eq!(created.len(), 16 * 40);
}

/// With one runtime thread per core (the default), each is pinned to a core of its own, and
/// every other thread, those started under load from the runtime threads among them, may run
/// on every core the process may use.
#[tokio::test]
async fn runtime_threads_are_pinned_one_per_core_and_no_other_thread_is() {
    let app = spawn_app_with(&["--sqlite-wal-limit-mib", "1"]).await;
    let (workers, pinned) = listening(&app).await;
    let all = process_cores(&app);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(workers, cores);
    let before = threads(&app);
    load(&app).await;
    let after = threads(&app);
    let count = |threads: &[Thread], name: &str| {
        threads.iter().filter(|t| t.name.starts_with(name)).count()
    };
    // Else the test would not test the inheritance it is about.
    assert!(
        count(&after, "sqlx-sqlite") > count(&before, "sqlx-sqlite"),
        "the pool opened connections under load: {before:?} → {after:?}"
    );
    assert!(
        count(&after, "tokio-rt-worker") > workers,
        "the blocking pool started a thread: {after:?}"
    );
    if !pinned {
        // Only where the process may not use every core its runtime threads count (a cgroup
        // quota): nothing is pinned then.
        assert!(after.iter().all(|t| t.cores == all), "{all}: {after:?}");
        return;
    }
    let (held, free): (Vec<_>, Vec<_>) = after.iter().partition(|t| t.cores != all);
    if cores > 1 {
        let distinct: BTreeSet<_> = held.iter().map(|t| t.cores.as_str()).collect();
        assert_eq!(
            held.len(),
            workers,
            "one pinned thread per runtime thread: {after:?}"
        );
        assert_eq!(distinct.len(), workers, "each on its own core: {held:?}");
        assert!(
            held.iter()
                .all(|t| t.name == "tokio-rt-worker" && !t.cores.contains([',', '-']))
        );
    }
    assert!(free.iter().any(|t| t.name.starts_with("sqlx-sqlite")));
}

/// `--pin-workers false`, or fewer runtime threads than cores, leaves every thread free.
#[tokio::test]
async fn runtime_threads_are_left_free_when_asked_or_fewer_than_the_cores() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let mut cases = vec![(vec!["--pin-workers", "false"], cores)];
    if cores > 1 {
        cases.push((vec!["--worker-threads", "1"], 1));
    }
    for (extra, expected) in cases {
        let app = spawn_app_with(&extra).await;
        assert_eq!(listening(&app).await, (expected, false), "{extra:?}");
        let all = process_cores(&app);
        assert_eq!(app.list_users("").await.status(), 200);
        let threads = threads(&app);
        assert!(
            threads.iter().all(|t| t.cores == all),
            "{extra:?}, {all}: {threads:?}"
        );
    }
}
