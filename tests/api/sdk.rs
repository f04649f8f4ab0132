//! The generated Rust SDK (`openapi/rust-client`) against the live server: if the spec and the
//! server disagree, these fail where an SDK user would.

use users_api_client::{Client, Error, ResponseValue, types};

use crate::helpers::{TestApp, spawn_app};

fn sdk(app: &TestApp, key: &str) -> Client {
    let mut headers = reqwest_013::header::HeaderMap::new();
    headers.insert(
        reqwest_013::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    let http = reqwest_013::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .unwrap();
    Client::new_with_client(&app.base, http)
}

fn input(name: &str, role: &str, email: Option<&str>) -> types::UserInput {
    types::UserInput {
        name: name.try_into().unwrap(),
        role: role.try_into().unwrap(),
        email: email.map(|e| e.try_into().unwrap()),
    }
}

/// The typed problem of an error response, with its status.
fn problem<T: std::fmt::Debug>(
    result: Result<ResponseValue<T>, Error<types::Problem>>,
) -> (u16, types::Problem) {
    match result {
        Err(Error::ErrorResponse(response)) => {
            let status = response.status().as_u16();
            (status, response.into_inner())
        }
        other => panic!("expected a problem, got {other:?}"),
    }
}

fn etag<T>(response: &ResponseValue<T>) -> String {
    response.headers()["etag"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn crud_through_the_sdk() {
    let app = spawn_app().await;
    let api = sdk(&app, &app.key);

    let created = api
        .create_user(None, &input("Ann", "Dev", Some("ann@example.org")))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let ann = created.into_inner();
    assert_eq!(location, format!("/api/v1/users/{}", ann.id));
    assert_eq!(ann.email.as_deref(), Some("ann@example.org"));

    let fetched = api.get_user(ann.id, None).await.unwrap().into_inner();
    assert_eq!(fetched.name, "Ann");
    assert_eq!(fetched.created_at, ann.created_at);

    let replaced = api
        .replace_user(ann.id, None, &input("Anna", "Lead", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            replaced.name.as_str(),
            replaced.role.as_str(),
            replaced.email
        ),
        ("Anna", "Lead", None)
    );

    let patch = types::UserPatch {
        role: Some("Ops".try_into().unwrap()),
        ..Default::default()
    };
    let patched = api
        .update_user(ann.id, None, &patch)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (patched.name.as_str(), patched.role.as_str()),
        ("Anna", "Ops")
    );

    let deleted = api.delete_user(ann.id, None).await.unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, gone) = problem(api.get_user(ann.id, None).await);
    assert_eq!(status, 404);
    assert_eq!(gone.type_, "urn:users-api:problem:not-found");
    assert!(gone.request_id.is_some());
}

#[tokio::test]
async fn pagination_through_the_sdk() {
    let app = spawn_app().await;
    let api = sdk(&app, &app.key);
    for i in 0..7 {
        api.create_user(None, &input(&format!("User {i}"), "Dev", None))
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    let mut cursor: Option<types::ListUsersCursor> = None;
    let limit = std::num::NonZeroU64::new(3);
    loop {
        let page = api
            .list_users(
                None,
                None,
                cursor.as_ref(),
                None,
                limit,
                None,
                None,
                Some("-name".parse::<types::UserSort>().unwrap()),
            )
            .await
            .unwrap()
            .into_inner();
        names.extend(page.items.into_iter().map(|u| u.name));
        match page.next_cursor {
            Some(next) => cursor = Some(next.parse().unwrap()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("User {i}")).collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn conditional_requests_through_the_sdk() {
    let app = spawn_app().await;
    let api = sdk(&app, &app.key);
    let created = api
        .create_user(None, &input("Ann", "Dev", None))
        .await
        .unwrap();
    let (stale, id) = (etag(&created), created.into_inner().id);
    let patch = types::UserPatch {
        role: Some("Lead".try_into().unwrap()),
        ..Default::default()
    };
    let fresh = etag(&api.update_user(id, Some(&stale), &patch).await.unwrap());
    let (status, conflict) = problem(api.update_user(id, Some(&stale), &patch).await);
    assert_eq!(status, 412);
    assert_eq!(conflict.type_, "urn:users-api:problem:precondition-failed");
    // progenitor has no variant for a bodiless 304, so it surfaces as an unexpected response.
    match api.get_user(id, Some(&fresh)).await {
        Err(Error::UnexpectedResponse(response)) => assert_eq!(response.status(), 304),
        other => panic!("expected 304, got {other:?}"),
    }
    assert_eq!(api.get_user(id, Some(&stale)).await.unwrap().status(), 200);
}

#[test]
fn the_sdk_refuses_what_the_spec_forbids_before_sending() {
    assert!(types::UserInputName::try_from("   ").is_err(), "blank");
    assert!(
        types::UserInputName::try_from("a\u{7}b").is_err(),
        "control character"
    );
    assert!(
        types::UserInputName::try_from("x".repeat(101)).is_err(),
        "too long"
    );
    assert!(types::UserInputName::try_from(" Zoë ").is_ok());
}

#[tokio::test]
async fn every_error_class_arrives_as_a_typed_problem() {
    let app = spawn_app().await;
    let api = sdk(&app, &app.key);
    api.create_user(None, &input("Ann", "Dev", Some("ann@example.org")))
        .await
        .unwrap();

    let (status, p) = problem(
        api.create_user(None, &input("Bob", "Dev", Some("ANN@example.org")))
            .await,
    );
    assert_eq!(
        (status, p.type_.as_str()),
        (409, "urn:users-api:problem:conflict")
    );

    let (status, p) = problem(
        api.create_user(None, &input("Eve", "Dev", Some("eve@localhost")))
            .await,
    );
    assert_eq!(
        (status, p.type_.as_str()),
        (422, "urn:users-api:problem:validation-error")
    );
    assert_eq!(p.errors[0].pointer.as_deref(), Some("/email"));

    let (status, _) = problem(
        api.list_users(
            None,
            None,
            Some(&"bogus".parse().unwrap()),
            None,
            None,
            None,
            None,
            None,
        )
        .await,
    );
    assert_eq!(status, 400);

    let anonymous = sdk(&app, "not-a-key");
    let (status, p) = problem(
        anonymous
            .list_users(None, None, None, None, None, None, None, None)
            .await,
    );
    assert_eq!(
        (status, p.type_.as_str()),
        (401, "urn:users-api:problem:invalid-token")
    );

    let (_, reader) = app.db.create_key(&["users:read"]);
    let read_only = sdk(&app, &reader);
    let (status, p) = problem(
        read_only
            .create_user(None, &input("Eve", "Dev", None))
            .await,
    );
    assert_eq!(
        (status, p.type_.as_str()),
        (403, "urn:users-api:problem:insufficient-scope")
    );

    let (status, _) = problem(api.delete_user(424242, None).await);
    assert_eq!(status, 404);
}
