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
            "listUsers",
            "replaceUser",
            "revokeApiKey",
            "updateUser"
        ]
    );
    let oauth = &spec["components"]["securitySchemes"]["OAuth2"];
    assert_eq!(oauth["type"], "oauth2");
    assert!(oauth["flows"]["clientCredentials"]["scopes"]["users:read"].is_string());
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
