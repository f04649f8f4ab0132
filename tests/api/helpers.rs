//! `spawn_app()`: the real `users-api` binary on 127.0.0.1, an ephemeral port and a fresh
//! SQLite file, with one method per call so each test reads as a story.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_users-api");

/// Which database the suite runs against; each test binary sets `crate::BACKEND`, so each
/// constructs only one variant.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the PostgreSQL suite creates its databases (it needs CREATE DATABASE rights).
fn postgres_admin_url() -> String {
    std::env::var("USERS_API_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Runs one statement as the PostgreSQL admin, on a thread of its own so that it works from
/// sync code (`Drop`) and async tests alike.
fn postgres_admin(sql: String) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use sea_orm::ConnectionTrait;
            let url = postgres_admin_url();
            let db = sea_orm::Database::connect(&url)
                .await
                .unwrap_or_else(|err| {
                    panic!(
                        "PostgreSQL is not reachable at {url} ({err}). Start it (for example \
                     `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) \
                     or run only the SQLite suite: `cargo test --lib --test api`"
                    )
                });
            db.execute_unprepared(&sql).await.unwrap();
            db.close().await.unwrap();
        })
    })
    .join()
    .expect("PostgreSQL admin statement");
}

/// Settings for opening the store directly, bypassing the server.
pub fn db_settings(url: &str) -> users_api::store::DbSettings {
    users_api::store::DbSettings {
        url: url.to_owned(),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: None,
        startup_wait: Duration::from_secs(5),
        sqlite: users_api::store::SqliteSettings {
            sync_full: false,
            wal_limit_bytes: 64 << 20,
            group_commit: true,
        },
    }
}

/// A fresh database that outlives server processes, so a test can restart the server on it:
/// a temp SQLite file, or a PostgreSQL database of its own, dropped afterwards.
pub struct TestDb {
    _dir: Option<TempDir>,
    pub url: String,
    postgres_name: Option<String>,
}

impl TestDb {
    pub fn new() -> Self {
        match crate::BACKEND {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("users.db").display());
                Self {
                    _dir: Some(dir),
                    url,
                    postgres_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("users_api_test_{}", uuid::Uuid::new_v4().simple());
                postgres_admin(format!("CREATE DATABASE {name}"));
                let admin = postgres_admin_url();
                let base = admin.rsplit_once('/').expect("a database URL").0;
                Self {
                    _dir: None,
                    url: format!("{base}/{name}"),
                    postgres_name: Some(name),
                }
            }
        }
    }

    /// Runs a CLI subcommand against this database; it must succeed.
    pub fn cli(&self, args: &[&str]) -> Output {
        let output = self.cli_output(args);
        assert!(
            output.status.success(),
            "users-api {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs a CLI subcommand as an operator would, without the `RUST_LOG` the tests set; it
    /// must succeed.
    pub fn cli_as_operator(&self, args: &[&str]) -> Output {
        let output = self
            .cli_command(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run users-api");
        assert!(output.status.success(), "users-api {args:?} failed");
        output
    }

    /// Runs a CLI subcommand against this database, whatever its outcome.
    pub fn cli_output(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run users-api")
    }

    /// Runs a CLI subcommand against this database with its standard output a pipe whose
    /// reader has already gone, as under `users-api keys list | head -n 0`.
    pub fn cli_into_closed_pipe(&self, args: &[&str]) -> Output {
        self.cli_command(args)
            .stdout(closed_pipe())
            .output()
            .expect("run users-api")
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = command();
        command.args(args).env("DATABASE_URL", &self.url);
        command
    }

    /// Runs `sql` on the database, around the server: as an operator, or to age data.
    #[allow(dead_code)]
    pub async fn execute(&self, sql: &str) {
        use sea_orm::ConnectionTrait;
        let db = sea_orm::Database::connect(&self.url).await.unwrap();
        db.execute_unprepared(sql).await.unwrap();
        db.close().await.unwrap();
    }

    /// Creates a key with `keys create` and returns its id and secret (the last stdout line).
    pub fn create_key(&self, scopes: &[&str]) -> (i64, String) {
        let mut args = vec!["keys", "create", "--name", "test"];
        for scope in scopes {
            args.extend(["--scope", scope]);
        }
        let stdout = String::from_utf8(self.cli(&args).stdout).unwrap();
        let key = stdout.lines().last().expect("a key line").to_owned();
        let id = stdout
            .split_whitespace()
            .nth(3)
            .and_then(|id| id.parse().ok())
            .expect("the first line names the key id");
        (id, key)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.postgres_name {
            postgres_admin(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// The writing end of a pipe nobody reads: every write to it fails with `BrokenPipe`.
pub fn closed_pipe() -> std::process::Stdio {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    writer.into()
}

/// `users-api serve` on a free port of 127.0.0.1, logging JSON, on the database at `url`.
pub fn serve_command(url: &str, extra: &[&str]) -> Command {
    let mut command = command();
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--log-format", "json"])
        .args(["--database-url", url])
        .args(extra);
    command
}

fn command() -> Command {
    let mut command = Command::new(BIN);
    for var in [
        "DATABASE_URL",
        "BIND",
        "LOG_FORMAT",
        "MAX_BODY_BYTES",
        "DB_MAX_CONNECTIONS",
        "DB_ACQUIRE_TIMEOUT_SECS",
        "DB_STATEMENT_TIMEOUT_SECS",
        "DB_STARTUP_WAIT_SECS",
        "OAUTH_ISSUER",
        "OAUTH_AUDIENCE",
        "OAUTH_JWKS_URL",
        "WORKER_THREADS",
        "TOKIO_WORKER_THREADS",
    ] {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "info");
    command
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// An admin key, for tests that are not about authorisation.
    pub key: String,
    pub db: Arc<TestDb>,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// `count` clients creating users in a loop until one of them has made `per_writer` (if given)
/// or the server stops answering. Each returns the users it got a complete 201 for.
pub fn spawn_writers(
    app: &TestApp,
    count: usize,
    per_writer: Option<usize>,
) -> Vec<tokio::task::JoinHandle<Vec<Value>>> {
    (0..count)
        .map(|w| {
            let (client, url, key) = (
                app.client.clone(),
                app.url("/api/v1/users"),
                app.key.clone(),
            );
            tokio::spawn(async move {
                send_until_refused(per_writer, 201, |i| {
                    let body = serde_json::json!({"name": format!("w{w} #{i}"), "role": "Dev"});
                    client.post(&url).bearer_auth(&key).json(&body)
                })
                .await
            })
        })
        .collect()
}

/// One client per user in `ids`, each patching its user's role to "1", "2", ... until the
/// server stops answering. Each returns the users it got a complete 200 for.
pub fn spawn_updaters(app: &TestApp, ids: &[i64]) -> Vec<tokio::task::JoinHandle<Vec<Value>>> {
    ids.iter()
        .map(|&id| {
            let (client, url, key) = (
                app.client.clone(),
                app.url(&format!("/api/v1/users/{id}")),
                app.key.clone(),
            );
            tokio::spawn(async move {
                send_until_refused(None, 200, |i| {
                    let body = serde_json::json!({"role": (i + 1).to_string()});
                    client.patch(&url).bearer_auth(&key).json(&body)
                })
                .await
            })
        })
        .collect()
}

/// Sends `request(0)`, `request(1)`, ... until `limit` (if given) or until one is not answered
/// `expected` with a complete body; returns the bodies of those that were.
async fn send_until_refused(
    limit: Option<usize>,
    expected: u16,
    request: impl Fn(usize) -> RequestBuilder,
) -> Vec<Value> {
    let mut acknowledged = Vec::new();
    for i in 0..limit.unwrap_or(usize::MAX) {
        match request(i).send().await {
            Ok(response) if response.status() == expected => {
                match response.json::<Value>().await {
                    Ok(body) => acknowledged.push(body),
                    // The server went away between the status line and the body: the client
                    // never saw a complete acknowledgement.
                    Err(_) => break,
                }
            }
            // Once the server stops, connections fail: that ends the load.
            _ => break,
        }
    }
    acknowledged
}

/// Everything the writers got a 201 for, once they have all finished.
pub async fn acknowledged(writers: Vec<tokio::task::JoinHandle<Vec<Value>>>) -> Vec<Value> {
    let mut all = Vec::new();
    for writer in writers {
        all.extend(writer.await.unwrap());
    }
    all
}

/// Waits until the first 200 users satisfy `done`: a load has got going before the server is
/// stopped, however slow the machine is today (a fixed sleep was sometimes too short).
pub async fn wait_for_users(app: &TestApp, done: impl Fn(&[Value]) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page: Value = app.list_users("?limit=200").await.json().await.unwrap();
        if done(page["items"].as_array().unwrap()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the load did not get going within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the server with SIGKILL while eight clients create users on it (on SQLite their
/// creates share group commits), and returns its database, its key and every user a client
/// got a 201 for.
pub async fn kill9_under_creates(app: TestApp) -> (Arc<TestDb>, String, Vec<Value>) {
    let (db, key) = (app.db.clone(), app.key.clone());
    let writers = spawn_writers(&app, 8, None);
    // Each client waits for each answer: at most eight of these are not yet acknowledged.
    wait_for_users(&app, |users| users.len() > 32).await;
    tokio::task::spawn_blocking(move || app.kill9())
        .await
        .unwrap();
    let acknowledged = acknowledged(writers).await;
    assert!(
        acknowledged.len() > 20,
        "the load ran: {} writes",
        acknowledged.len()
    );
    (db, key, acknowledged)
}

/// Each of `users` is stored exactly as it was acknowledged.
pub async fn assert_all_stored(app: &TestApp, users: &[Value]) {
    for user in users {
        assert_eq!(
            &app.stored(user).await,
            user,
            "acknowledged, so it must be there"
        );
    }
}

/// Starts a server with extra flags on a fresh database holding one admin key.
pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let db = Arc::new(TestDb::new());
    let (_, key) = db.create_key(&["admin"]);
    start(db, key, extra).await
}

/// Starts a server on an existing database.
pub async fn start(db: Arc<TestDb>, key: String, extra: &[&str]) -> TestApp {
    let url = db.url.clone();
    start_via(db, key, &url, extra).await
}

/// Starts a server on an existing database reached at `url` (through a proxy, say).
pub async fn start_via(db: Arc<TestDb>, key: String, url: &str, extra: &[&str]) -> TestApp {
    start_with_env(db, key, url, extra, &[]).await
}

/// Starts a server with these environment variables set (`RUST_LOG`, say).
pub async fn start_with_env(
    db: Arc<TestDb>,
    key: String,
    url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> TestApp {
    let mut command = serve_command(url, extra);
    command.envs(env.iter().copied());
    start_command(db, key, command).await
}

/// Starts the server `command` runs (a `serve_command`, perhaps wrapped).
pub async fn start_command(db: Arc<TestDb>, key: String, mut command: Command) -> TestApp {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn users-api");
    let stdout = drain(child.stdout.take().unwrap(), None);
    let (addr_tx, addr_rx) = mpsc::channel();
    let stderr = drain(child.stderr.take().unwrap(), Some(addr_tx));
    let addr = tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap_or_else(|_| {
            panic!(
                "server did not report its address: {}",
                stderr.lock().unwrap()
            )
        });
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        key,
        db,
        child,
        stdout,
        stderr,
    }
}

/// Copies a pipe into a buffer on a thread; reports the `listening` address if asked.
fn drain(
    pipe: impl std::io::Read + Send + 'static,
    addr_tx: Option<mpsc::Sender<String>>,
) -> Arc<Mutex<String>> {
    let buffer = Arc::new(Mutex::new(String::new()));
    let sink = buffer.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(tx) = &addr_tx
                && let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == "listening"
                && event["target"] == "users_api::startup"
            {
                let _ = tx.send(event["addr"].as_str().unwrap().to_owned());
            }
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    buffer
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.key)
    }

    pub async fn list_users(&self, query: &str) -> Response {
        self.request(Method::GET, &format!("/api/v1/users{query}"))
            .send()
            .await
            .unwrap()
    }

    pub async fn create_user(&self, body: &Value) -> Response {
        self.request(Method::POST, "/api/v1/users")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a user that must succeed and returns its body.
    pub async fn create_ok(&self, body: &Value) -> Value {
        let response = self.create_user(body).await;
        assert_eq!(response.status(), 201, "create {body}");
        response.json().await.unwrap()
    }

    pub async fn get_user(&self, id: impl std::fmt::Display) -> Response {
        self.request(Method::GET, &format!("/api/v1/users/{id}"))
            .send()
            .await
            .unwrap()
    }

    /// Creates a user from `body` and returns its id.
    pub async fn create_user_id(&self, body: &Value) -> i64 {
        let response = self.create_user(body).await;
        assert_eq!(response.status(), 201, "{body}");
        response.json::<Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap()
    }

    /// The stored form of `user` (a user as a response gave it), read back by its id.
    pub async fn stored(&self, user: &Value) -> Value {
        let response = self.get_user(user["id"].as_i64().unwrap()).await;
        assert_eq!(response.status(), 200, "{user}");
        response.json().await.unwrap()
    }

    pub async fn replace_user(&self, id: i64, body: &Value) -> Response {
        self.request(Method::PUT, &format!("/api/v1/users/{id}"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn update_user(&self, id: i64, body: &Value) -> Response {
        self.request(Method::PATCH, &format!("/api/v1/users/{id}"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete_user(&self, id: i64) -> Response {
        self.request(Method::DELETE, &format!("/api/v1/users/{id}"))
            .send()
            .await
            .unwrap()
    }

    pub async fn create_api_key(&self, body: &Value) -> Response {
        self.request(Method::POST, "/api/v1/api-keys")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Runs `sql`, with `id` bound to its `?`, on this test's own connection to the SQLite
    /// database: a write made around the API, by another process than the server. (Only the
    /// SQLite suite writes so; the PostgreSQL suite shares these helpers.)
    #[allow(dead_code)]
    pub async fn write_around_api(&self, sql: &str, id: i64) {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        let db = sea_orm::Database::connect(&self.db.url).await.unwrap();
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            [id.into()],
        ))
        .await
        .unwrap();
    }

    /// `GET /health/ready`.
    pub async fn readiness(&self) -> Response {
        self.client
            .get(self.url("/health/ready"))
            .send()
            .await
            .unwrap()
    }

    /// The Prometheus text of `/metrics` (no token is configured in tests).
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Standard output once it contains `needle`; the pipe is read on another thread, so poll
    /// with a deadline rather than assume it has arrived.
    pub async fn stdout_containing(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stdout = self.stdout();
            if stdout.contains(needle) || std::time::Instant::now() > deadline {
                return stdout;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything logged so far. The server's log lines are written by a thread of their own
    /// and read here by another, so this first waits long enough for lines from requests
    /// already answered to arrive.
    pub async fn logs(&self) -> String {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stderr.lock().unwrap().clone()
    }

    /// The `listening` line the server logged once ready (address, runtime threads).
    pub async fn listening_line(&self) -> Value {
        let logs = self.logs().await;
        logs.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .find(|event: &Value| {
                event["message"] == "listening" && event["target"] == "users_api::startup"
            })
            .expect("a listening line")
    }

    /// SIGKILL: the process gets no chance to flush or finish anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit: the graceful path operators use.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `call` until it answers `status`, failing after `within`: for effects that are
/// promised within a bound (a revocation reaching every key cache) rather than at once.
pub async fn eventually_status<F, Fut>(within: Duration, status: u16, call: F) -> Response
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        let response = call().await;
        if response.status() == status {
            return response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {} after {within:?}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that a response is a problem with this status and returns its body.
pub async fn assert_problem(response: Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:users-api:problem:"),
        "{body}"
    );
    assert!(!body["title"].as_str().unwrap().is_empty(), "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty(), "{body}");
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    body
}
