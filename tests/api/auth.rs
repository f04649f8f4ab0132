use reqwest::Method;
use serde_json::{Value, json};

use std::time::Duration;

use futures_util::FutureExt;

use crate::helpers::{
    TestDb, assert_problem, closed_pipe, eventually_status, serve_command, spawn_app,
    spawn_app_with, start,
};

/// RFC 6750: a bare challenge when no credentials came, `invalid_token` when bad ones did.
fn assert_bearer_challenge(response: &reqwest::Response) {
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

fn assert_invalid_token(response: &reqwest::Response) {
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with(r#"Bearer error="invalid_token", error_description=""#),
        "{challenge}"
    );
}

#[tokio::test]
async fn data_endpoints_need_a_valid_key() {
    let app = spawn_app().await;
    let user_path = "/api/v1/users/1";
    for (method, path) in [
        (Method::GET, "/api/v1/users"),
        (Method::POST, "/api/v1/users"),
        (Method::GET, user_path),
        (Method::PUT, user_path),
        (Method::PATCH, user_path),
        (Method::DELETE, user_path),
    ] {
        let bare = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_bearer_challenge(&bare);
        assert_problem(bare, 401).await;

        for (authorization, credentials_sent) in [
            ("Basic YWxpY2U6c2VjcmV0".to_owned(), false),
            ("Bearer".to_owned(), false),
            ("Bearer not-a-key".to_owned(), true),
            (format!("Bearer uak_{}", "0".repeat(40)), true),
            (format!("bearer {}x", app.key), true),
            ("Bearer a.b.c".to_owned(), true),
        ] {
            let response = app
                .client
                .request(method.clone(), app.url(path))
                .header("Authorization", &authorization)
                .header("Content-Type", "application/json")
                .body(r#"{"name": "Ann", "role": "Dev"}"#)
                .send()
                .await
                .unwrap();
            let kind = if credentials_sent {
                assert_invalid_token(&response);
                "invalid-token"
            } else {
                assert_bearer_challenge(&response);
                "unauthorized"
            };
            let problem = assert_problem(response, 401).await;
            assert_eq!(
                problem["type"],
                format!("urn:users-api:problem:{kind}"),
                "{authorization}"
            );
        }
    }
    // Nothing was created by any of those attempts.
    let listed: Value = app.list_users("").await.json().await.unwrap();
    assert_eq!(listed["items"], json!([]));
}

#[tokio::test]
async fn scopes_limit_what_a_key_can_do() {
    let app = spawn_app().await;
    let (_, reader) = app.db.create_key(&["users:read"]);
    let (_, writer) = app.db.create_key(&["users:write"]);
    let user = app.create_ok(&json!({"name": "Ann", "role": "Dev"})).await;
    let path = format!("/api/v1/users/{}", user["id"]);

    let read = app
        .client
        .get(app.url(&path))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let denied = app
        .client
        .post(app.url("/api/v1/users"))
        .bearer_auth(&reader)
        .json(&json!({"name": "Bob", "role": "Dev"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        denied.headers()["www-authenticate"],
        r#"Bearer error="insufficient_scope", scope="users:write""#
    );
    let problem = assert_problem(denied, 403).await;
    assert_eq!(
        problem["detail"],
        "this operation needs the `users:write` scope"
    );
    let denied = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_problem(denied, 403).await;

    let written = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&writer)
        .json(&json!({"role": "Lead"}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200);
    let denied = app
        .client
        .get(app.url("/api/v1/users"))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(denied, 403).await;
    assert_eq!(problem["type"], "urn:users-api:problem:insufficient-scope");
}

#[tokio::test]
async fn a_key_revoked_while_the_server_runs_stops_working() {
    // Revoked from outside this instance (the CLI), the key is refused once its key-cache
    // entry ages out: within the TTL, here 1 s.
    let app = spawn_app_with(&["--key-cache-ttl-secs", "1"]).await;
    let (id, key) = app.db.create_key(&["users:read"]);
    let ok = app
        .client
        .get(app.url("/api/v1/users"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let listing = String::from_utf8(app.db.cli(&["keys", "list"]).stdout).unwrap();
    assert!(
        listing.contains(&key[..12]),
        "the list shows prefixes: {listing}"
    );
    assert!(!listing.contains(&key), "the list never shows secrets");

    let revoked =
        String::from_utf8(app.db.cli(&["keys", "revoke", &id.to_string()]).stdout).unwrap();
    assert!(
        revoked.contains(&format!("Revoked API key {id}")),
        "{revoked}"
    );
    let refused = eventually_status(Duration::from_millis(1500), 401, || {
        app.client
            .get(app.url("/api/v1/users"))
            .bearer_auth(&key)
            .send()
            .map(Result::unwrap)
    })
    .await;
    assert_invalid_token(&refused);
    let problem = assert_problem(refused, 401).await;
    assert_eq!(problem["detail"], "the API key has been revoked");
    // Other keys are unaffected.
    assert_eq!(app.list_users("").await.status(), 200);
}

#[tokio::test]
async fn docs_spec_and_root_are_public() {
    let app = spawn_app().await;
    // Both docs views embed the whole spec, links included.
    for page in ["/docs", "/redoc"] {
        let html = app.client.get(app.url(page)).send().await.unwrap();
        assert_eq!(html.status(), 200, "{page}");
        assert!(
            html.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = html.text().await.unwrap();
        assert!(html.contains("\"operationId\":\"listUsers\""), "{page}");
        assert!(
            html.contains("$response.body#/id"),
            "{page} shows the OpenAPI links"
        );
    }
    // They are pages to read: other methods are refused like anywhere else.
    for page in [
        "/docs",
        "/docs/oauth-receiver.html",
        "/redoc",
        "/api/v1/openapi.json",
    ] {
        let refused = app.client.post(app.url(page)).send().await.unwrap();
        assert_eq!(refused.headers()["allow"], "GET, HEAD", "{page}");
        assert_problem(refused, 405).await;
    }
    let spec: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["info"]["title"], "users-api");
    let yaml = app
        .client
        .get(app.url("/api/v1/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(yaml.status(), 200);
    assert!(
        yaml.text()
            .await
            .unwrap()
            .contains("operationId: listUsers")
    );

    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = no_redirects.get(app.url("/")).send().await.unwrap();
    assert_eq!(root.status(), 303);
    assert_eq!(root.headers()["location"], "/docs");
}

#[tokio::test]
async fn first_start_prints_one_admin_key_that_works_and_is_never_logged() {
    let db = std::sync::Arc::new(TestDb::new());
    let app = start(db.clone(), String::new(), &[]).await;
    let banner = app.stdout_containing("====\n").await;
    let key = banner
        .split_whitespace()
        .find(|word| word.starts_with("uak_") && word.len() == 44)
        .unwrap_or_else(|| panic!("no key in banner: {banner}"))
        .to_owned();
    let ok = app
        .client
        .post(app.url("/api/v1/users"))
        .bearer_auth(&key)
        .json(&json!({"name": "Ann", "role": "Dev"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201, "the bootstrap key is an admin key");
    let logs = app.logs().await;
    assert!(!logs.contains(&key), "the key must never reach the logs");
    assert!(!logs.contains(&key[4..]), "nor any part of its secret");
    drop(app);

    let again = start(db, key.clone(), &[]).await;
    assert!(!again.stdout().contains("uak_"), "the banner is shown once");
    assert_eq!(again.list_users("").await.status(), 200);
}

#[test]
fn a_server_whose_banner_cannot_be_shown_still_serves() {
    use std::io::{BufRead, BufReader};
    let db = TestDb::new();
    let mut child = serve_command(&db.url, &[])
        .stdout(closed_pipe())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut warned = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        assert!(!line.contains("panicked"), "{line}");
        warned |= line.contains("the bootstrap admin key could not be shown");
        if line.contains("\"listening\"") {
            break;
        }
    }
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(warned, "the lost key is reported");
    assert!(still_running, "and the server serves on");
}

#[test]
fn keys_cli_on_a_closed_pipe() {
    let db = TestDb::new();
    db.create_key(&["users:read"]);
    let listed = db.cli_into_closed_pipe(&["keys", "list"]);
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(listed.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A secret nobody saw makes a key nobody can use: that is said, not passed over.
    let created =
        db.cli_into_closed_pipe(&["keys", "create", "--name", "lost", "--scope", "users:read"]);
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(!created.status.success());
    let id = stderr
        .split_once("users-api: API key ")
        .and_then(|(_, rest)| rest.split_once(" was created, but its secret could not be printed"))
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        stderr.contains(&format!("revoke it with `users-api keys revoke {id}`")),
        "{stderr}"
    );
    let listed = String::from_utf8(db.cli(&["keys", "list"]).stdout).unwrap();
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with(&format!("{id}\t"))),
        "{listed}"
    );
}

#[tokio::test]
async fn keys_cli_rejects_unknown_scopes() {
    let db = TestDb::new();
    let output = std::process::Command::new(crate::helpers::BIN)
        .args([
            "keys",
            "create",
            "--name",
            "x",
            "--scope",
            "users:delete",
            "--database-url",
            &db.url,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown scope"), "{stderr}");
}
