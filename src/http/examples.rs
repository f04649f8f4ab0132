//! The spec's error examples: every error response of every operation shows a problem of its
//! own status, made by the same code that answers real requests, so that an example cannot
//! say what the server never would.

use poem_openapi::{error::ContentTypeError, types::ToJSON};
use serde_json::{Value, json};

use super::{
    api_keys::ApiKeyInput,
    edge::headers_too_large,
    params::ParamRules,
    payload::BodySchema,
    problem::{PROBLEM_JSON, Problem},
    users::UserInput,
};
use crate::{
    domain::{FieldError, Scope},
    error::AppError,
};

/// The request id every example names.
const REQUEST_ID: &str = "5f0c6f5e-4f7a-4d0e-9d6b-0c2f4b1f9a77";

/// Puts an example problem into each error response of each operation of `spec`.
pub fn add_problem_examples(spec: &mut Value) {
    let params = ParamRules::new(spec);
    let Some(paths) = spec["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths {
        for (method, operation) in item.as_object_mut().into_iter().flatten() {
            let scope = needed_scope(operation["description"].as_str().unwrap_or_default());
            let target = Target {
                method: method.to_uppercase(),
                path,
                scope,
            };
            let responses = operation["responses"].as_object_mut().into_iter().flatten();
            for (status, response) in responses {
                let Some(problem) = status
                    .parse()
                    .ok()
                    .and_then(|status| example(status, &target, &params))
                else {
                    continue;
                };
                let problem = Problem {
                    request_id: Some(REQUEST_ID.into()),
                    ..problem
                };
                response["content"][PROBLEM_JSON]["example"] =
                    problem.to_json().unwrap_or_default();
            }
        }
    }
}

/// The operation an example is for.
struct Target<'a> {
    method: String,
    path: &'a str,
    /// The scope its description says it needs ("Needs `users:read`.").
    scope: Option<Scope>,
}

impl Target<'_> {
    fn is_api_keys(&self) -> bool {
        self.path.contains("/api-keys")
    }
}

fn needed_scope(description: &str) -> Option<Scope> {
    let (_, rest) = description.split_once("Needs `")?;
    let (scope, _) = rest.split_once('`')?;
    Scope::parse(scope).ok()
}

/// A problem the operation `target` answers with `status`, as the server writes it.
fn example(status: u16, target: &Target, params: &ParamRules) -> Option<Problem> {
    let error = match status {
        400 => match params.example_failure(&target.method, target.path) {
            Some(failure) => return Some(Problem::bad_parameters(vec![failure])),
            None => {
                let err = serde_json::from_str::<Value>(r#"{"name" "Ann"}"#)
                    .expect_err("the sample is not JSON");
                AppError::BadRequest(format!("the request body is not valid JSON: {err}"))
            }
        },
        401 => AppError::MissingCredentials,
        403 => AppError::Forbidden {
            needed: target.scope?,
        },
        404 => AppError::NotFound {
            resource: if target.is_api_keys() {
                "API key"
            } else {
                "user"
            },
            id: 42,
        },
        409 if target.is_api_keys() => AppError::own_key_revoked(),
        409 => AppError::email_taken(),
        410 => AppError::EventsExpired {
            after: 1_200,
            oldest: 5_000,
        },
        412 => AppError::PreconditionFailed,
        413 => AppError::PayloadTooLarge { limit: 65_536 },
        415 => {
            let refused = ContentTypeError::NotSupported {
                content_type: "text/plain".into(),
            };
            return Some(Problem::from_error(&refused.into()));
        }
        422 => AppError::Validation(invalid_body(target)),
        428 => AppError::PreconditionRequired,
        429 => AppError::RateLimited { retry_after: 17 },
        431 => return Some(headers_too_large()),
        500 => AppError::Database(sea_orm::DbErr::Custom(String::new())),
        503 => AppError::Unavailable("the database is unavailable; retry shortly".into()),
        _ => return None,
    };
    let problem = Problem::from_app_error(&error);
    debug_assert_eq!(problem.status, status, "{} {}", target.method, target.path);
    Some(problem)
}

/// What the body parser says of a typical mistake in the operation's body.
fn invalid_body(target: &Target) -> Vec<FieldError> {
    let refused = if target.is_api_keys() {
        ApiKeyInput::parse(&json!({"name": "ci", "scopes": ["users:delete"]})).err()
    } else {
        UserInput::parse(&json!({"name": "Ann", "email": "ann.example.com"})).err()
    };
    refused.expect("the sample body is invalid")
}
