use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestDb, assert_problem, spawn_app, spawn_app_with};

async fn post_raw(
    app: &crate::helpers::TestApp,
    content_type: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = app
        .request(Method::POST, "/api/v1/users")
        .body(body.to_owned());
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn malformed_and_truncated_json_are_400_problems() {
    let app = spawn_app().await;
    for body in [
        r#"{"name": "Al"#,
        "{",
        "not json",
        r#"{"name": "A", "role": "B",}"#,
        "{}}",
    ] {
        let problem =
            assert_problem(post_raw(&app, Some("application/json"), body).await, 400).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("not valid JSON"),
            "{problem}"
        );
    }
    let empty = assert_problem(post_raw(&app, Some("application/json"), "").await, 400).await;
    assert!(
        empty["detail"].as_str().unwrap().contains("empty"),
        "{empty}"
    );
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let app = spawn_app().await;
    let valid = r#"{"name": "Ann", "role": "Dev"}"#;
    assert_problem(post_raw(&app, Some("text/plain"), valid).await, 415).await;
    assert_problem(
        post_raw(&app, Some("application/x-www-form-urlencoded"), "name=Ann").await,
        415,
    )
    .await;
    assert_problem(post_raw(&app, None, valid).await, 415).await;
    // A charset parameter is fine.
    assert_eq!(
        post_raw(&app, Some("application/json; charset=utf-8"), valid)
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn bad_path_parameters_are_400_not_500() {
    let app = spawn_app().await;
    for id in ["abc", "1.5", "99999999999999999999", "%20"] {
        let problem = assert_problem(app.get_user(id).await, 400).await;
        assert_eq!(
            problem["errors"],
            json!([{"in": "path", "name": "id", "message": "must be an integer"}]),
            "{id}"
        );
    }
    assert_problem(app.get_user(-1).await, 404).await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let app = spawn_app().await;
    for path in [
        "/nope",
        "/api/v1/nope",
        "/api/v2/users",
        "/api/v1/users/1/extra",
    ] {
        let response = app.request(Method::GET, path).send().await.unwrap();
        assert_problem(response, 404).await;
    }
    for (method, path) in [
        (Method::DELETE, "/api/v1/users"),
        (Method::PUT, "/api/v1/users"),
        (Method::POST, "/api/v1/users/1"),
        (Method::POST, "/"),
    ] {
        let response = app.request(method, path).send().await.unwrap();
        // RFC 9110: a 405 lists the methods the path does support.
        let allow = response.headers()["allow"].to_str().unwrap().to_owned();
        assert!(
            allow.contains("GET") && allow.contains("HEAD"),
            "{path}: {allow}"
        );
        assert_problem(response, 405).await;
    }
}

/// The `Allow` of a readable path names HEAD: it is the GET's answer without the body, query
/// parameters and errors included.
#[tokio::test]
async fn head_answers_as_get_without_the_body() {
    let app = spawn_app().await;
    for name in ["Ann", "Bob", "Cy"] {
        app.create_user_id(&json!({"name": name, "role": "Dev"}))
            .await;
    }
    let id = app
        .create_user_id(&json!({"name": "Dee", "role": "Ops"}))
        .await;
    let head = async |path: &str| app.request(Method::HEAD, path).send().await.unwrap();
    for path in [
        format!("/api/v1/users/{id}"),
        "/api/v1/users?limit=2&sort=name".to_owned(),
    ] {
        let get = app.request(Method::GET, &path).send().await.unwrap();
        let headed = head(&path).await;
        assert_eq!(headed.status(), 200, "{path}");
        for name in ["content-type", "etag", "link"] {
            assert_eq!(
                headed.headers().get(name),
                get.headers().get(name),
                "{path}: {name}"
            );
        }
        assert!(!get.bytes().await.unwrap().is_empty());
        assert!(headed.bytes().await.unwrap().is_empty(), "{path}");
    }
    // The query reaches the operation: a page of 2 of 4 users links to the next...
    assert!(
        head("/api/v1/users?limit=2")
            .await
            .headers()
            .contains_key("link")
    );
    // ...and is checked by it.
    let bad_query = head("/api/v1/users?limit=100000").await;
    assert_eq!(bad_query.status(), 400);
    assert_eq!(
        bad_query.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(head("/api/v1/users/999999").await.status(), 404);
}

#[tokio::test]
async fn oversized_bodies_are_413_and_store_nothing() {
    let app = spawn_app_with(&["--max-body-bytes", "1024"]).await;
    let huge = json!({"name": "Ann", "role": "Dev", "padding": "x".repeat(2000)});
    let problem = assert_problem(app.create_user(&huge).await, 413).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("1024"),
        "{problem}"
    );

    // Without a Content-Length (chunked), the limit still holds while reading.
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..20).map(|_| Ok("x".repeat(100))).collect();
    let streamed = app
        .request(Method::POST, "/api/v1/users")
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_problem(streamed, 413).await;

    let listed: Value = app.list_users("").await.json().await.unwrap();
    assert_eq!(listed["items"], json!([]));
    // Just under the limit is accepted.
    app.create_ok(&json!({"name": "Ann", "role": "Dev", "padding": "x".repeat(900)}))
        .await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated_and_in_problems() {
    let app = spawn_app().await;
    let response = app
        .request(Method::GET, "/api/v1/users/12345")
        .header("X-Request-Id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-abc.123");
    let problem = assert_problem(response, 404).await;
    assert_eq!(problem["request_id"], "trace-abc.123");

    let hostile = app
        .request(Method::GET, "/api/v1/users")
        .header("X-Request-Id", "a b\"<script>")
        .send()
        .await
        .unwrap();
    let generated = hostile.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(generated, "a b\"<script>");
    assert_eq!(generated.len(), 36, "a UUID replaces an unsafe id");

    let anonymous = app
        .client
        .get(app.url("/api/v1/users"))
        .header("X-Request-Id", "anonymous-1")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Every request is logged once with method, path, status, its id, who called (the audit
    // name, never the key) and from where.
    let logs = app.logs().await;
    let request_line = |id: &str| {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["span"]["request_id"] == id && e["message"] == "request")
            .expect("a request log line")
    };
    let line = request_line("trace-abc.123");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/api/v1/users/12345");
    assert_eq!(line["status"], 404);
    assert!(line["latency_ms"].is_number());
    assert_eq!(line["principal"], "api-key:1");
    assert_eq!(line["client"], "127.0.0.1");
    assert!(!logs.contains(&app.key), "the key itself is never logged");
    let line = request_line("anonymous-1");
    assert_eq!(line["status"], 401);
    assert_eq!(
        line["principal"],
        Value::Null,
        "no credentials, no principal"
    );
    assert_eq!(line["client"], "127.0.0.1");
}

/// A server that cannot listen says on which address, and which setting changes it.
#[test]
fn a_busy_port_is_named_with_the_setting_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let db = TestDb::new();
    let output = db.cli_output(&["serve", "--bind", &addr]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("--bind or BIND"), "{stderr}");
}

/// `-h` groups the flags by concern, in the order a deployment decides them, one line each;
/// `--help` adds the details; `keys create --help` shows its own flags first, and examples.
#[test]
fn help_groups_flags_by_concern_and_shows_examples() {
    let db = TestDb::new();
    let help = |args: &[&str]| String::from_utf8(db.cli(args).stdout).unwrap();
    let headings = [
        "Server:",
        "Database:",
        "Authentication:",
        "OAuth:",
        "Limits:",
        "Logging:",
        "Performance:",
    ];
    for args in [&["-h"][..], &["serve", "-h"], &["--help"]] {
        let text = help(args);
        let at: Vec<usize> = headings
            .iter()
            .map(|heading| text.find(&format!("\n{heading}\n")).expect(heading))
            .collect();
        assert!(at.is_sorted(), "headings in order in {args:?}: {text}");
    }
    // One line each: a flag's help is its line, with its env var; details only in --help.
    let short = help(&["serve", "-h"]);
    let line = |text: &str, flag: &str| {
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|l| l.contains(flag)).expect(flag);
        lines[at + 1..]
            .iter()
            .take_while(|l| !l.trim_start().starts_with("--") && !l.trim().is_empty())
            .map(|l| l.trim().to_owned())
            .collect::<Vec<_>>()
    };
    let wal = line(&short, "--sqlite-wal-limit-mib");
    assert_eq!(wal.len(), 1, "{wal:?}");
    assert!(wal[0].contains("[env: SQLITE_WAL_LIMIT_MIB=]"), "{wal:?}");
    let long = help(&["serve", "--help"]);
    assert!(long.contains("1,000 pages"), "details in --help: {long}");
    assert!(!short.contains("1,000 pages"), "no details in -h: {short}");

    let keys = help(&["keys", "create", "--help"]);
    assert!(keys.contains("Examples:"), "{keys}");
    assert!(
        keys.contains("users-api keys create --name me --scope admin"),
        "{keys}"
    );
    assert!(
        keys.find("--name").unwrap() < keys.find("--database-url").unwrap(),
        "the command's own flags come first: {keys}"
    );
}

/// `keys` commands print their result and nothing else: no migration or log lines around the
/// key, on a database they migrate first.
#[test]
fn keys_commands_print_their_result_and_nothing_else() {
    let db = TestDb::new();
    let created = db.cli_as_operator(&["keys", "create", "--name", "ops", "--scope", "admin"]);
    let stdout = String::from_utf8_lossy(&created.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("Created API key 1 (ops)"), "{stdout}");
    assert!(
        lines[1].starts_with("uak_") && lines[1].len() == 44,
        "{stdout}"
    );
    let listed = db.cli_as_operator(&["keys", "list"]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header, one key and a note: {stdout}");
    assert!(lines[0].contains("LAST USED*"), "{stdout}");
    assert!(
        lines[2].starts_with("* as running servers last recorded it"),
        "how fresh LAST USED is: {stdout}"
    );
    if matches!(crate::BACKEND, crate::helpers::Backend::Sqlite) {
        // (PostgreSQL's server may add notices of its own, which the driver logs.)
        let stderr =
            |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(stderr(&created), "");
        assert_eq!(stderr(&listed), "");
    }
}
