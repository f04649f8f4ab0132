//! What an attacker tries at the edge, and what the service answers: spoofed forwarded
//! addresses, credentials of other schemes and paths that look like health checks to dodge the
//! address limit, and CORS origins that could never match (the CORS answers are in `limits`).

use std::{
    io::Read,
    process::Stdio,
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::helpers::{TestApp, TestDb, serve_command, spawn_app_with, start_command};

/// The status of `GET path` with these headers.
async fn status(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> StatusCode {
    let mut request = app.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status()
}

/// An address limit of 2 an hour.
const TWO_AN_HOUR: [&str; 4] = [
    "--rate-limit-anonymous",
    "2",
    "--rate-limit-window-secs",
    "3600",
];

#[tokio::test]
async fn every_request_without_valid_credentials_counts_against_its_address() {
    let app = spawn_app_with(&TWO_AN_HOUR).await;
    // The operator's key, verified before the address runs out, keeps working after.
    assert_eq!(app.list_users("").await.status(), 200);
    for scheme in ["Basic dXNlcjpwYXNz", "x"] {
        let answered = status(&app, "/api/v1/users", &[("Authorization", scheme)]).await;
        assert_eq!(answered, 401, "{scheme}");
    }
    // Over the limit, whatever the scheme, and on paths that only start like a health check.
    for path in ["/api/v1/users", "/health/x", "/health/live/"] {
        let answered = status(&app, path, &[("Authorization", "Basic eA==")]).await;
        assert_eq!(answered, 429, "{path}");
    }
    // A key guessed from the throttled address is refused before it is looked up.
    let guess = format!("Bearer uak_{}", "7".repeat(40));
    let answered = status(&app, "/api/v1/users", &[("Authorization", &guess)]).await;
    assert_eq!(answered, 429);
    // The exact health paths are never limited; a verified key has its own budget.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        assert_eq!(status(&app, path, &[]).await, 200, "{path}");
    }
    assert_eq!(app.list_users("").await.status(), 200);
}

#[tokio::test]
async fn behind_one_proxy_the_client_is_the_right_most_forwarded_address() {
    let mut flags = TWO_AN_HOUR.to_vec();
    flags.push("--trust-forwarded-for");
    let app = spawn_app_with(&flags).await;
    // The left of the header is the client's to write: a new first hop each time gains nothing.
    for first in ["10.0.0.1", "10.0.0.2"] {
        let forwarded = format!("{first}, 203.0.113.9");
        let answered = status(&app, "/api/v1/users", &[("X-Forwarded-For", &forwarded)]).await;
        assert_eq!(answered, 401);
    }
    let forwarded = [("X-Forwarded-For", "10.0.0.3, 203.0.113.9")];
    assert_eq!(status(&app, "/api/v1/users", &forwarded).await, 429);
    // The same address in IPv6 form is the same client.
    let mapped = [("X-Forwarded-For", "::ffff:203.0.113.9")];
    assert_eq!(status(&app, "/api/v1/users", &mapped).await, 429);
    // IPv6 clients are grouped by /64: a new address in the same /64 is the same client.
    for host in ["1", "2"] {
        let forwarded = format!("2001:db8:1:2::{host}");
        let answered = status(&app, "/api/v1/users", &[("X-Forwarded-For", &forwarded)]).await;
        assert_eq!(answered, 401);
    }
    let same_64 = [("X-Forwarded-For", "2001:db8:1:2:ffff::9")];
    assert_eq!(status(&app, "/api/v1/users", &same_64).await, 429);
    let next_64 = [("X-Forwarded-For", "2001:db8:1:3::1")];
    assert_eq!(status(&app, "/api/v1/users", &next_64).await, 401);
}

#[tokio::test]
async fn behind_trusted_proxies_the_client_is_the_first_address_not_among_them() {
    let mut flags = TWO_AN_HOUR.to_vec();
    flags.extend(["--trusted-proxies", "10.0.0.0/8,127.0.0.1"]);
    let app = spawn_app_with(&flags).await;
    // The peer (127.0.0.1) and 10.1.2.3 are proxies; 198.51.100.7 is the client, whatever it
    // claims to its left.
    for claimed in ["192.0.2.1", "192.0.2.2"] {
        let forwarded = format!("{claimed}, 198.51.100.7, 10.1.2.3");
        let answered = status(&app, "/api/v1/users", &[("X-Forwarded-For", &forwarded)]).await;
        assert_eq!(answered, 401);
    }
    let forwarded = [("X-Forwarded-For", "198.51.100.7, 10.1.2.3")];
    assert_eq!(status(&app, "/api/v1/users", &forwarded).await, 429);
    let other = [("X-Forwarded-For", "198.51.100.8, 10.1.2.3")];
    assert_eq!(status(&app, "/api/v1/users", &other).await, 401);
}

#[test]
fn origins_that_can_never_match_are_refused_at_start() {
    let db = TestDb::new();
    for origin in [
        "app.example.com",
        "https://app.example.com/path",
        "null",
        "*",
        "ftp://app.example.com",
    ] {
        let mut server = serve_command(&db.url, &["--cors-allow-origin", origin])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Refused at once; a server that started instead is stopped, and the test fails.
        let deadline = Instant::now() + Duration::from_secs(10);
        let exited = loop {
            if let Some(status) = server.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                server.kill().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        server
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(
            exited.is_some_and(|status| !status.success()),
            "{origin} was accepted"
        );
        assert!(
            stderr.contains(&format!("`{origin}` is not an origin")),
            "{origin}: {stderr}"
        );
    }
}

/// A raw connection to `app`.
async fn connect(app: &TestApp) -> tokio::net::TcpStream {
    connect_to(app).await.unwrap()
}

/// How long until the server closes `stream` (reading and discarding what it sends), if it
/// does within `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(&[
        "--header-read-timeout-secs",
        "1",
        "--idle-timeout-secs",
        "2",
    ])
    .await;
    // Connects and sends nothing.
    let mut silent = connect(&app).await;
    // Sends its headers a line every 300 ms, for ever.
    let mut drip = connect(&app).await;
    let dripping = tokio::spawn(async move {
        drip.write_all(b"GET /health/live HTTP/1.1\r\n")
            .await
            .unwrap();
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if drip
                .write_all(format!("X-Drip-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return i;
            }
        }
        unreachable!()
    });
    let closed = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|after| after >= Duration::from_millis(900)),
        "{closed:?}"
    );
    let lines = tokio::time::timeout(Duration::from_secs(5), dripping).await;
    assert!(
        lines.is_ok_and(|sent| sent.unwrap() < 10),
        "the drip was cut off"
    );
    // A keep-alive connection is closed once idle, after its answer.
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let closed = closed_within(&mut idle, Duration::from_secs(6)).await;
    assert!(
        closed.is_some_and(|after| after >= Duration::from_millis(1800)),
        "{closed:?}"
    );
    // Everyone else is served meanwhile.
    assert_eq!(status(&app, "/health/live", &[]).await, 200);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(&["--max-connections", "2"]).await;
    let first = connect(&app).await;
    let _second = connect(&app).await;
    let mut third = connect(&app).await;
    third
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "answered while two connections were open");
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
    let n = answered.expect("answered once a slot was free").unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// A problem answered before hyper parses the request: no request id (there is no request).
async fn early_problem(response: reqwest::Response, status: u16, kind: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(
        body["type"],
        format!("urn:users-api:problem:{kind}"),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().starts_with("send "),
        "{body}"
    );
}

#[tokio::test]
async fn heads_past_the_parsers_limits_are_problems_too() {
    let app = spawn_app_with(&[]).await;
    // More headers than hyper takes (100), and a request line over 16 KiB.
    let mut request = app.client.get(app.url("/health/live"));
    for i in 0..120 {
        request = request.header(format!("x-header-{i}"), "1");
    }
    early_problem(request.send().await.unwrap(), 431, "headers-too-large").await;
    let long = format!("/api/v1/users?q={}", "a".repeat(20 * 1024));
    let response = app.client.get(app.url(&long)).send().await.unwrap();
    early_problem(response, 414, "uri-too-long").await;
    // Within the limits, the edge answers (with the request's id).
    let mut request = app.client.get(app.url("/health/live"));
    for i in 0..70 {
        request = request.header(format!("x-header-{i}"), "1");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 431);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(status(&app, "/health/live", &[]).await, 200);
}

#[tokio::test]
async fn a_stop_does_not_wait_for_requests_not_yet_sent() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(&[]).await;
    let mut half = connect(&app).await;
    half.write_all(b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || app.stop())
        .await
        .unwrap();
    assert!(stopped.success());
    // Not the header timeout (10 s), nor the grace period (30 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        closed_within(&mut half, Duration::from_secs(1))
            .await
            .is_some()
    );
}

/// Out of file descriptors, the accept loop waits and says so once in a while, instead of
/// spinning a core and logging nothing; once connections close, it serves again.
#[tokio::test]
async fn running_out_of_file_descriptors_is_survived_and_logged_once() {
    let db = std::sync::Arc::new(TestDb::new());
    let (_, key) = db.create_key(&["admin"]);
    let serve = serve_command(&db.url, &[]);
    let mut wrapped = std::process::Command::new("bash");
    wrapped
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" "$@""#)
        .arg(serve.get_program())
        .args(serve.get_args());
    for (name, value) in serve.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    let app = start_command(db, key, wrapped).await;
    let mut held = Vec::new();
    for _ in 0..80 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), connect_to(&app)).await
        {
            held.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let logs = app.logs().await;
    let logged = logs.matches("cannot accept connections").count();
    assert!((1..=2).contains(&logged), "{logged} lines: {logs}");
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        if app
            .client
            .get(app.url("/health/live"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served, "served again once connections closed");
}

async fn connect_to(app: &TestApp) -> std::io::Result<tokio::net::TcpStream> {
    tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await
}
