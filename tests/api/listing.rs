//! Filters, sorts and keyset pagination with opaque cursors and `Link` headers.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app};

async fn page(app: &TestApp, query: &str) -> (Value, Option<String>) {
    let response = app.list_users(query).await;
    assert_eq!(response.status(), 200, "{query}");
    let link = response
        .headers()
        .get("link")
        .map(|l| l.to_str().unwrap().to_owned());
    (response.json().await.unwrap(), link)
}

fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect()
}

/// Walks every page of `query` by cursor, checking the `Link` header agrees.
async fn walk(app: &TestApp, query: &str, limit: u32) -> Vec<Value> {
    let mut users = Vec::new();
    let mut next = format!("?limit={limit}{query}");
    loop {
        let (body, link) = page(app, &next).await;
        users.extend(body["items"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(cursor) => {
                let link = link.expect("a Link header with every next_cursor");
                let url = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned();
                assert!(link.ends_with(r#"; rel="next""#), "{link}");
                assert!(url.contains(&format!("cursor={cursor}")), "{url}");
                next = url.trim_start_matches("/api/v1/users").to_owned();
            }
            None => {
                assert!(link.is_none());
                return users;
            }
        }
    }
}

async fn seed(app: &TestApp) -> Vec<Value> {
    let mut users = Vec::new();
    for (name, role, email) in [
        ("bob", "Dev", Some("bob@example.org")),
        ("Alice", "Tester", None),
        ("zoë", "Dev", Some("Zoe@Example.org")),
        ("ALICE", "Dev", None),
        ("Émile", "Ops", None),
        ("alice", "Tester", None),
        ("100% Carl", "Dev", None),
        ("Dora_the", "Ops", None),
    ] {
        let mut body = json!({"name": name, "role": role});
        if let Some(email) = email {
            body["email"] = json!(email);
        }
        users.push(app.create_ok(&body).await);
    }
    users
}

#[tokio::test]
async fn every_sort_pages_through_everything_in_order_with_ties_broken_by_id() {
    let app = spawn_app().await;
    let users = seed(&app).await;
    let lower = |u: &Value| u["name"].as_str().unwrap().to_lowercase();
    for (sort, descending) in [
        ("id", false),
        ("-id", true),
        ("name", false),
        ("-name", true),
        ("created_at", false),
        ("-created_at", true),
    ] {
        let mut expected = users.clone();
        expected.sort_by(|a, b| {
            let key = match sort.trim_start_matches('-') {
                "name" => lower(a).cmp(&lower(b)),
                "created_at" => a["created_at"].as_str().cmp(&b["created_at"].as_str()),
                _ => std::cmp::Ordering::Equal,
            };
            key.then(a["id"].as_i64().cmp(&b["id"].as_i64()))
        });
        if descending {
            expected.reverse();
        }
        for limit in [1, 3] {
            let walked = walk(&app, &format!("&sort={sort}"), limit).await;
            assert_eq!(walked, expected, "sort={sort} limit={limit}");
        }
    }
}

#[tokio::test]
async fn filters_narrow_the_listing_and_survive_paging() {
    let app = spawn_app().await;
    let users = seed(&app).await;
    let id_of = |name: &str| {
        users.iter().find(|u| u["name"] == name).unwrap()["id"]
            .as_i64()
            .unwrap()
    };

    let devs = walk(&app, "&role=Dev", 2).await;
    assert_eq!(devs.len(), 4);
    assert!(devs.iter().all(|u| u["role"] == "Dev"));
    assert!(walk(&app, "&role=dev", 2).await.is_empty(), "role is exact");

    let (by_email, _) = page(&app, "?email=ZOE@example.ORG").await;
    assert_eq!(ids(&by_email), [id_of("zoë")]);

    let alices = walk(&app, "&q=aLiCe&sort=-id", 2).await;
    let alice_ids: Vec<_> = alices.iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert_eq!(alice_ids, [id_of("alice"), id_of("ALICE"), id_of("Alice")]);
    let (unicode, _) = page(&app, "?q=%C3%89MI").await; // "ÉMI"
    assert_eq!(ids(&unicode), [id_of("Émile")]);
    let (percent, _) = page(&app, "?q=%25").await; // a literal %
    assert_eq!(ids(&percent), [id_of("100% Carl")]);
    let (underscore, _) = page(&app, "?q=a_t").await; // a literal _
    assert_eq!(ids(&underscore), [id_of("Dora_the")]);

    let middle = &users[3];
    let at = middle["created_at"].as_str().unwrap();
    let encoded = at.replace('+', "%2B");
    let after = walk(&app, &format!("&created_after={encoded}"), 2).await;
    assert_eq!(after, users[4..].to_vec());
    let before = walk(&app, &format!("&created_before={encoded}&role=Dev"), 2).await;
    let expected: Vec<_> = users[..3]
        .iter()
        .filter(|u| u["role"] == "Dev")
        .cloned()
        .collect();
    assert_eq!(before, expected);
}

#[tokio::test]
async fn bad_sorts_filters_and_cursors_are_400s() {
    let app = spawn_app().await;
    seed(&app).await;
    let (first, _) = page(&app, "?limit=2&sort=name").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let mut tampered = cursor.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for query in [
        "?sort=email".to_owned(),
        "?sort=--id".to_owned(),
        "?email=not-an-email".to_owned(),
        "?created_after=yesterday".to_owned(),
        "?created_after=2030-01-01T00:00:00Z&created_before=2020-01-01T00:00:00Z".to_owned(),
        format!("?limit=2&sort=name&cursor={tampered}"),
        // A cursor is bound to its query: another sort or filter refuses it.
        format!("?limit=2&sort=-name&cursor={cursor}"),
        format!("?limit=2&sort=name&role=Dev&cursor={cursor}"),
        "?cursor=djE6Mg".to_owned(),
    ] {
        let problem = assert_problem(app.list_users(&query).await, 400).await;
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{query}");
    }
    // The untampered cursor still works with its own query.
    let (second, _) = page(&app, &format!("?limit=2&sort=name&cursor={cursor}")).await;
    assert_eq!(second["items"].as_array().unwrap().len(), 2);
}

/// Every bad parameter of a request is named, with where it was sent and what to send instead,
/// in words: no parser's or type's name.
#[tokio::test]
async fn parameter_errors_name_every_bad_parameter_and_what_to_send() {
    let app = spawn_app().await;
    let errors = |problem: &Value| -> Vec<(String, String, String)> {
        problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("an errors list in {problem}"))
            .iter()
            .map(|error| {
                let field = |name: &str| error[name].as_str().unwrap().to_owned();
                (field("in"), field("name"), field("message"))
            })
            .collect()
    };
    let entry = |location: &str, name: &str, message: &str| {
        (location.to_owned(), name.to_owned(), message.to_owned())
    };
    let sorts = "must be one of: id, -id, name, -name, created_at, -created_at";
    let instant = "must be a date and time in RFC 3339 form, such as 2026-01-31T09:00:00Z";

    let problem = assert_problem(
        app.list_users("?limit=abc&sort=bogus&created_after=yesterday&role=Dev")
            .await,
        400,
    )
    .await;
    assert_eq!(
        errors(&problem),
        [
            entry("query", "limit", "must be an integer from 1 to 200"),
            entry("query", "sort", sorts),
            entry("query", "created_after", instant),
        ]
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("`limit` must be an integer from 1 to 200; `sort` must be one of"),
        "{problem}"
    );

    for (query, expected) in [
        (
            "?limit=0",
            entry("query", "limit", "must be an integer from 1 to 200"),
        ),
        (
            "?limit=201",
            entry("query", "limit", "must be an integer from 1 to 200"),
        ),
        ("?sort=ID", entry("query", "sort", sorts)),
        (
            "?created_before=2026-13-01",
            entry("query", "created_before", instant),
        ),
        (
            "?email=not-an-address",
            entry(
                "query",
                "email",
                "must be an email address, such as ann@example.com",
            ),
        ),
        (
            &format!("?q={}", "x".repeat(101)),
            entry("query", "q", "must be 1 to 100 characters"),
        ),
    ] {
        let problem = assert_problem(app.list_users(query).await, 400).await;
        assert_eq!(errors(&problem), [expected], "{query}");
    }

    // A cursor that is not URL-safe base64, and one this API did not issue.
    let problem = assert_problem(app.list_users("?cursor=djE6%24Mg").await, 400).await;
    let [(location, name, message)] = <[_; 1]>::try_from(errors(&problem)).unwrap();
    assert_eq!((location.as_str(), name.as_str()), ("query", "cursor"));
    assert!(message.contains("`next_cursor` unchanged"), "{message}");
    let problem = assert_problem(app.list_users("?cursor=bogus").await, 400).await;
    let [(location, name, message)] = <[_; 1]>::try_from(errors(&problem)).unwrap();
    assert_eq!((location.as_str(), name.as_str()), ("query", "cursor"));
    assert!(message.contains("not one this API issued"), "{message}");

    // A path parameter: errors::bad_path_parameters_are_400_not_500.
    let problem = assert_problem(
        app.request(reqwest::Method::POST, "/api/v1/users")
            .header("Idempotency-Key", "k".repeat(256))
            .json(&json!({"name": "Ann", "role": "Dev"}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(
        errors(&problem),
        [entry(
            "header",
            "Idempotency-Key",
            "must be 1 to 255 characters"
        )]
    );

    // No framework or Rust type names in any of them.
    for query in ["?limit=abc", "?limit=0", "?sort=bogus", "?created_after=x"] {
        let text = app.list_users(query).await.text().await.unwrap();
        for leaked in [
            "uint64",
            "int64",
            "UserSort",
            "string_date-time",
            "verification failed",
            "failed to parse",
            "optional_",
        ] {
            assert!(!text.contains(leaked), "{query}: {text}");
        }
    }
}
