use std::process::Command;

use serde_json::Value;

use crate::helpers::{BIN, closed_pipe, spawn_app};

const REGENERATE: &str = "regenerate with: cargo run -q -- openapi > openapi/openapi.json && cargo run -q -- openapi --yaml > openapi/openapi.yaml";

fn printed(args: &[&str]) -> String {
    let output = Command::new(BIN)
        .arg("openapi")
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

fn committed(file: &str) -> String {
    let path = format!("{}/openapi/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{path} is missing; {REGENERATE}"))
}

#[test]
fn committed_spec_matches_the_code() {
    assert!(
        committed("openapi.json") == printed(&[]),
        "openapi/openapi.json is stale; {REGENERATE}"
    );
    assert!(
        committed("openapi.yaml") == printed(&["--yaml"]),
        "openapi/openapi.yaml is stale; {REGENERATE}"
    );
}

#[test]
fn printing_the_spec_into_a_closed_pipe_stops_quietly() {
    // `users-api openapi | head`: the reader stopping early is not the command failing.
    let output = Command::new(BIN)
        .arg("openapi")
        .stdout(closed_pipe())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[tokio::test]
async fn served_spec_is_the_committed_spec() {
    let app = spawn_app().await;
    let served: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let committed: Value = serde_json::from_str(&committed("openapi.json")).unwrap();
    assert_eq!(served, committed);
}

#[test]
fn every_operation_is_named_secured_and_documents_its_errors() {
    let spec: Value = serde_json::from_str(&printed(&[])).unwrap();
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer");
    let mut operation_ids = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            operation_ids.push(id.to_owned());
            assert!(
                !operation["summary"].as_str().unwrap_or("").is_empty(),
                "{id} has a summary"
            );
            let responses = operation["responses"].as_object().unwrap();
            if !path.starts_with("/api/v1/") {
                // Health checks and metrics are public.
                assert_eq!(
                    operation["security"],
                    serde_json::json!([]),
                    "{method} {path} is public"
                );
                continue;
            }
            assert_eq!(
                operation["security"],
                serde_json::json!([{"ApiKey": []}, {"OAuth2": []}]),
                "{method} {path} accepts either credential"
            );
            for status in ["401", "403", "429", "500", "503"] {
                let problem =
                    &responses[status]["content"]["application/problem+json"]["schema"]["$ref"];
                assert_eq!(
                    problem, "#/components/schemas/Problem",
                    "{id} documents {status}"
                );
            }
        }
    }
    operation_ids.sort();
    assert_eq!(
        operation_ids,
        [
            "createApiKey",
            "createUser",
            "deleteUser",
            "getApiKey",
            "getLiveness",
            "getMetrics",
            "getReadiness",
            "getUser",
            "listApiKeys",
            "listEvents",
            "listUsers",
            "replaceUser",
            "revokeApiKey",
            "streamEvents",
            "updateUser"
        ]
    );
    // Without the identity provider's URLs, a bearer JWT: no made-up flow endpoints.
    let oauth = &spec["components"]["securitySchemes"]["OAuth2"];
    assert_eq!(oauth["type"], "http");
    assert_eq!(oauth["scheme"], "bearer");
    assert_eq!(oauth["bearerFormat"], "JWT");
    assert!(
        oauth["description"]
            .as_str()
            .unwrap()
            .contains("`users:read`")
    );
    assert!(!printed(&[]).contains(".invalid"));
    let tags: Vec<&str> = spec["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tag| {
            assert!(tag["description"].as_str().is_some_and(|d| !d.is_empty()));
            tag["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(tags, ["Users", "Events", "API keys", "Health and metrics"]);
    let conditional = &spec["paths"]["/api/v1/users/{id}"];
    assert!(conditional["get"]["responses"]["304"].is_object());
    for method in ["put", "patch", "delete"] {
        for status in ["412", "428"] {
            assert!(
                conditional[method]["responses"][status].is_object(),
                "{method} documents {status}"
            );
        }
    }
    let user = &spec["components"]["schemas"]["User"]["properties"];
    for field in ["id", "created_at", "updated_at", "created_by", "updated_by"] {
        assert_eq!(user[field]["readOnly"], true, "{field} is read-only");
    }
}

/// RFC 9110's (and RFC 6585's) name of each error status the spec documents.
const TITLES: [(&str, &str); 15] = [
    ("400", "Bad Request"),
    ("401", "Unauthorized"),
    ("403", "Forbidden"),
    ("404", "Not Found"),
    ("409", "Conflict"),
    ("410", "Gone"),
    ("412", "Precondition Failed"),
    ("413", "Content Too Large"),
    ("415", "Unsupported Media Type"),
    ("422", "Unprocessable Content"),
    ("428", "Precondition Required"),
    ("429", "Too Many Requests"),
    ("431", "Request Header Fields Too Large"),
    ("500", "Internal Server Error"),
    ("503", "Service Unavailable"),
];

fn example<'a>(spec: &'a Value, path: &str, method: &str, status: &str) -> &'a Value {
    &spec["paths"][path][method]["responses"][status]["content"]["application/problem+json"]["example"]
}

#[test]
fn every_error_response_shows_a_problem_of_its_own_status() {
    let spec: Value = serde_json::from_str(&printed(&[])).unwrap();
    let mut shown = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.as_str() < "400" {
                    continue;
                }
                let title = TITLES.iter().find(|(s, _)| s == status).map(|(_, t)| *t);
                let example = example(&spec, path, method, status);
                assert_eq!(
                    example["status"].as_u64().map(|s| s.to_string()),
                    Some(status.clone()),
                    "{method} {path} {status}"
                );
                assert_eq!(example["title"].as_str(), title, "{method} {path} {status}");
                assert!(
                    example["type"]
                        .as_str()
                        .unwrap()
                        .starts_with("urn:users-api:problem:")
                );
                assert!(!example["detail"].as_str().unwrap().is_empty());
                assert!(!response["description"].as_str().unwrap().is_empty());
                shown += 1;
            }
        }
    }
    assert!(shown > 80, "{shown} examples");
    // A bad parameter is the operation's own.
    let by_id = &example(&spec, "/api/v1/users/{id}", "get", "400")["errors"][0];
    assert_eq!(
        (&by_id["in"], &by_id["name"]),
        (&"path".into(), &"id".into())
    );
    let listing = &example(&spec, "/api/v1/users", "get", "400")["errors"][0];
    assert_eq!(listing["in"], "query");
    assert_eq!(
        example(&spec, "/api/v1/api-keys/{id}", "delete", "403")["detail"],
        "this operation needs the `admin` scope"
    );
}

/// The examples are what the server answers: the same body but for the request id.
#[tokio::test]
async fn error_examples_are_what_the_server_answers() {
    let app = spawn_app().await;
    let spec: Value = serde_json::from_str(&printed(&[])).unwrap();
    let cases = [
        ("/api/v1/users/{id}", "/api/v1/users/abc", "400", true),
        ("/api/v1/users/{id}", "/api/v1/users/42", "404", true),
        ("/api/v1/users/{id}", "/api/v1/users/42", "401", false),
        ("/api/v1/api-keys/{id}", "/api/v1/api-keys/42", "404", true),
    ];
    for (template, path, status, with_key) in cases {
        let request = app.client.get(app.url(path));
        let request = if with_key {
            request.bearer_auth(&app.key)
        } else {
            request
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_str(), status, "{path}");
        let mut answered: Value = response.json().await.unwrap();
        let mut shown = example(&spec, template, "get", status).clone();
        for body in [&mut answered, &mut shown] {
            body.as_object_mut().unwrap().remove("request_id");
        }
        assert_eq!(answered, shown, "GET {path}");
    }
    let huge = "x".repeat(17 * 1024);
    let response = app
        .client
        .get(app.url("/health/live"))
        .header("x-filler", huge)
        .send()
        .await
        .unwrap();
    let mut answered: Value = response.json().await.unwrap();
    answered.as_object_mut().unwrap().remove("request_id");
    let mut shown = example(&spec, "/health/live", "get", "431").clone();
    shown.as_object_mut().unwrap().remove("request_id");
    assert_eq!(answered, shown);
}
