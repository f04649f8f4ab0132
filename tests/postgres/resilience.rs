//! A database that starts late or goes away for a while: the service waits, answers 503
//! problems instead of hanging, and recovers by itself. A TCP proxy in front of PostgreSQL
//! stands in for the network between them.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::helpers::{TestDb, assert_problem, start_via};

const POSTGRES: &str = "127.0.0.1:5432";

/// Forwards a loopback port to PostgreSQL while up; while down, the port refuses connections
/// and every forwarded connection is cut.
struct Proxy {
    port: u16,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    fn reserve() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Proxy {
            port,
            tasks: Arc::default(),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn up(&self) {
        let listener = TcpListener::bind(self.addr()).await.unwrap();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(POSTGRES).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(forward);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn down(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// The test database's URL, reached through `host_port` instead of PostgreSQL's own port.
fn url_via(db: &TestDb, host_port: &str) -> String {
    let name = db.url.rsplit('/').next().expect("a database name");
    format!("postgres://postgres@{host_port}/{name}")
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

#[tokio::test]
async fn the_service_starts_when_the_database_comes_up_late() {
    let db = Arc::new(TestDb::new());
    let (_, key) = db.create_key(&["admin"]);
    let proxy = Arc::new(Proxy::reserve());
    let url = url_via(&db, &proxy.addr());

    let late = proxy.clone();
    let opener = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        late.up().await;
    });
    let app = start_via(
        db.clone(),
        key,
        &url,
        &[
            "--db-acquire-timeout-secs",
            "1",
            "--db-startup-wait-secs",
            "30",
        ],
    )
    .await;
    opener.await.unwrap();

    let logs = app.logs().await;
    assert!(
        logs.contains("database not reachable yet; retrying"),
        "{logs}"
    );
    assert!(logs.contains("database reachable"));
    assert_eq!(app.list_users("").await.status(), 200);
}

#[tokio::test]
async fn the_service_gives_up_on_a_database_that_never_comes() {
    let db = TestDb::new();
    let proxy = Proxy::reserve();
    let output = std::process::Command::new(crate::helpers::BIN)
        .args(["migrate", "--db-startup-wait-secs", "2", "--database-url"])
        .arg(url_via(&db, &proxy.addr()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gave up on the database after"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_database_gives_503s_then_recovers_by_itself() {
    let db = Arc::new(TestDb::new());
    let (_, key) = db.create_key(&["admin"]);
    let proxy = Proxy::reserve();
    proxy.up().await;
    let url = url_via(&db, &proxy.addr());
    let app = start_via(db.clone(), key, &url, &["--db-acquire-timeout-secs", "1"]).await;
    let user = app.create_ok(&json!({"name": "Ann", "role": "Dev"})).await;

    proxy.down();
    let started = std::time::Instant::now();
    let response = app.get_user(user["id"].as_i64().unwrap()).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let problem = assert_problem(response, 503).await;
    assert_eq!(problem["type"], "urn:users-api:problem:unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a bounded wait, not a hang"
    );
    let write = app
        .create_user(&json!({"name": "Bob", "role": "Dev"}))
        .await;
    assert_problem(write, 503).await;
    let ready = app.readiness().await;
    assert_problem(ready, 503).await;
    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200, "the process itself is fine");

    proxy.up().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = app.get_user(user["id"].as_i64().unwrap()).await;
        if response.status() == 200 {
            assert_eq!(response.json::<Value>().await.unwrap(), user);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not recover: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = app.readiness().await;
    assert_eq!(ready.status(), 200);
    // Nothing half-written while it was away: Bob was refused, so he is not there.
    let page: Value = app.list_users("").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn instances_starting_together_on_an_empty_database_migrate_once_and_mint_one_key() {
    let db = Arc::new(TestDb::new());
    let (a, b) = tokio::join!(
        crate::helpers::start(db.clone(), String::new(), &[]),
        crate::helpers::start(db.clone(), String::new(), &[])
    );
    // Both are listening, so any banner has been printed; the pipes are read on threads, so
    // wait for the first to arrive, then give the other one the same grace.
    let minted = || {
        [&a, &b]
            .iter()
            .filter(|app| app.stdout().contains("uak_"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while minted() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(minted(), 1, "exactly one instance prints a bootstrap key");
    for app in [&a, &b] {
        let logs = app.logs().await;
        assert!(!logs.contains("\"level\":\"ERROR\""), "{logs}");
    }
}
