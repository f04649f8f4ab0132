//! What an attacker tries at the edge, and what the service answers: spoofed forwarded
//! addresses, credentials of other schemes and paths that look like health checks to dodge the
//! address limit, and CORS origins that could never match (the CORS answers are in `limits`).

use std::{
    io::Read,
    process::Stdio,
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::helpers::{TestApp, TestDb, serve_command, spawn_app_with};

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
