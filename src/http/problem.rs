//! RFC 9457 problem details: the one shape of every 4xx/5xx body, how each [`AppError`] and
//! each of the framework's own errors reads in it, and its place in the spec.

use std::marker::PhantomData;

use poem::{
    Response,
    error::{CorsError, MethodNotAllowedError, NotFoundError, ResponseError},
    http::{HeaderValue, StatusCode, header},
};
use poem_openapi::{
    ApiResponse, Object,
    error::{ContentTypeError, ParsePathError},
    registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::{Example, ToJSON, Type},
};

use super::params::{ParamFailure, ParamLocation};
use crate::{domain::FieldError, error::AppError};

/// What a refused stream is told to wait before trying again.
const STREAM_RETRY_AFTER_SECS: u64 = 5;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What a 500 says: nothing of the cause, which is logged with the request id.
pub const INTERNAL_DETAIL: &str =
    "the server failed to handle this request; quote the request id when reporting it";

/// An RFC 9457 problem detail. `type` identifies the kind of problem, `title` summarises it,
/// `detail` explains this occurrence; `request_id` matches the `X-Request-Id` response header
/// and the server's log line; `errors` lists each invalid field of a rejected body.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Problem {
    /// A URI reference identifying the problem kind, e.g. `urn:users-api:problem:validation-error`.
    #[oai(rename = "type")]
    pub problem_type: String,
    /// A short, human-readable summary of the problem kind.
    pub title: String,
    /// The HTTP status code of this response.
    pub status: u16,
    /// What went wrong in this request, in words meant for the developer calling the API.
    pub detail: String,
    /// The id of the request, for correlating with server logs.
    #[oai(skip_serializing_if_is_none)]
    pub request_id: Option<String>,
    /// Present on validation failures: one entry per invalid member of the body.
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<ProblemFieldError>>,
    /// The `WWW-Authenticate` challenge sent with the problem; a header, not part of the body.
    #[oai(skip)]
    pub challenge: Option<String>,
    /// Seconds for the `Retry-After` header; a header, not part of the body.
    #[oai(skip)]
    pub retry_after: Option<u64>,
}

/// One invalid member of a request body (`pointer`), or one invalid parameter (`in` and
/// `name`).
#[derive(Debug, Clone, Object)]
#[oai(rename = "FieldError")]
pub struct ProblemFieldError {
    /// JSON Pointer (RFC 6901) to the member of the body, e.g. `/email`; empty for the body as
    /// a whole. Absent for a parameter.
    #[oai(skip_serializing_if_is_none)]
    pub pointer: Option<String>,
    // No doc comment: poem-openapi would wrap the reference in an `allOf` to carry it, which
    // openapi-python-client cannot read for an enum. `ParamLocation`'s own says what it is.
    #[oai(rename = "in", skip_serializing_if_is_none)]
    pub location: Option<ParamLocation>,
    /// The name of the invalid parameter, e.g. `limit`. Absent for a member of the body.
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
    /// Why the value was rejected, and what to send instead.
    pub message: String,
}

impl From<ParamFailure> for ProblemFieldError {
    fn from(failure: ParamFailure) -> Self {
        ProblemFieldError {
            pointer: None,
            location: Some(failure.location),
            name: Some(failure.name),
            message: failure.message,
        }
    }
}

impl Example for Problem {
    fn example() -> Self {
        Problem {
            problem_type: "urn:users-api:problem:validation-error".into(),
            title: "Unprocessable Content".into(),
            status: 422,
            detail: "the request body failed validation".into(),
            request_id: Some("5f0c6f5e-4f7a-4d0e-9d6b-0c2f4b1f9a77".into()),
            errors: Some(vec![ProblemFieldError {
                pointer: Some("/email".into()),
                location: None,
                name: None,
                message: "is not a valid email address (Missing separator character '@'.)".into(),
            }]),
            challenge: None,
            retry_after: None,
        }
    }
}

impl From<&FieldError> for ProblemFieldError {
    fn from(err: &FieldError) -> Self {
        Self {
            pointer: Some(err.pointer.clone()),
            location: None,
            name: None,
            message: err.message.clone(),
        }
    }
}

/// The status each error is answered with.
impl ResponseError for AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::NotFound { .. } | AppError::KeyRevoked { .. } => StatusCode::NOT_FOUND,
            AppError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            AppError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            AppError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::EventsExpired { .. } | AppError::EventsAhead { .. } => StatusCode::GONE,
            AppError::TooManyStreams { whose, .. } if *whose == AppError::STREAMS_OF_CALLER => {
                StatusCode::TOO_MANY_REQUESTS
            }
            AppError::TooManyStreams { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::BadRequest(_) | AppError::BadParameter(_) => StatusCode::BAD_REQUEST,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::MissingCredentials | AppError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AppError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The RFC 6750 `WWW-Authenticate` challenge that goes with an error, if any.
fn challenge(err: &AppError) -> Option<String> {
    match err {
        AppError::MissingCredentials => Some("Bearer".into()),
        AppError::InvalidToken(description) => Some(format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            quoted_string_safe(description)
        )),
        AppError::Forbidden { needed } => Some(format!(
            "Bearer error=\"insufficient_scope\", scope=\"{needed}\""
        )),
        _ => None,
    }
}

/// RFC 6750 limits `error_description` to printable ASCII without `"` and `\`.
fn quoted_string_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

/// A status's name as RFC 9110 gives it (the `http` crate still has RFC 7231's for 413 and 422).
fn title(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "Content Too Large",
        StatusCode::UNPROCESSABLE_ENTITY => "Unprocessable Content",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:users-api:problem:{kind}"),
            title: title(status).to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            request_id: None,
            errors: None,
            challenge: None,
            retry_after: None,
        }
    }

    pub fn from_app_error(err: &AppError) -> Self {
        // The listings' parameters, the only ones the layers below see, are in the query; they
        // read like any other bad parameter.
        if let AppError::BadParameter(param) = err {
            return Self::bad_parameters(vec![ParamFailure {
                location: ParamLocation::Query,
                name: param.name.to_owned(),
                message: param.message.clone(),
            }]);
        }
        let detail = match err {
            // The cause stays in the log; the client learns only that it was not its fault.
            AppError::Database(_) => INTERNAL_DETAIL.to_owned(),
            other => other.to_string(),
        };
        let mut problem = Self::new(err.status(), err.kind(), detail);
        problem.challenge = challenge(err);
        problem.retry_after = match err {
            AppError::RateLimited { retry_after } => Some(*retry_after),
            AppError::Unavailable(_) => Some(1),
            AppError::TooManyStreams { .. } => Some(STREAM_RETRY_AFTER_SECS),
            _ => None,
        };
        if let AppError::Validation(errors) = err {
            problem.errors = Some(errors.iter().map(ProblemFieldError::from).collect());
        }
        problem
    }

    /// A 400 naming every parameter the request got wrong.
    pub fn bad_parameters(failures: Vec<ParamFailure>) -> Self {
        let detail = failures
            .iter()
            .map(|failure| format!("`{}` {}", failure.name, failure.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut problem = Self::new(StatusCode::BAD_REQUEST, "bad-request", detail);
        problem.errors = Some(failures.into_iter().map(ProblemFieldError::from).collect());
        problem
    }

    /// Maps any error that reached the edge, the framework's own included, to a problem.
    pub fn from_error(err: &poem::Error) -> Self {
        if let Some(app) = err.downcast_ref::<AppError>() {
            return Self::from_app_error(app);
        }
        let status = err.status();
        if status.is_server_error() {
            return Self::new(status, "internal-error", INTERNAL_DETAIL);
        }
        let (kind, detail) = if err.is::<NotFoundError>() {
            ("not-found", "no resource exists at this path".to_owned())
        } else if err.is::<MethodNotAllowedError>() {
            (
                "method-not-allowed",
                "this path does not support the request method".to_owned(),
            )
        } else if let Some(path_error) = err.downcast_ref::<ParsePathError>() {
            // The framework names path parameters by position; the reason is what helps.
            (
                "bad-request",
                format!("invalid path parameter: {}", path_error.reason),
            )
        } else if let Some(cors) = err.downcast_ref::<CorsError>() {
            let refused = match cors {
                CorsError::OriginNotAllowed => "this origin may not call the API from a browser",
                CorsError::MethodNotAllowed => "this method may not be used from a browser",
                CorsError::HeadersNotAllowed => {
                    "these request headers may not be sent from a browser"
                }
            };
            (
                "cors-refused",
                format!("{refused} (CORS); the operator allows origins with --cors-allow-origin"),
            )
        } else if let Some(content_type) = err.downcast_ref::<ContentTypeError>() {
            (
                "unsupported-media-type",
                format!("{content_type}; send `Content-Type: application/json`"),
            )
        } else {
            // The framework's parse errors name the parameter and the reason; that is the
            // detail a client needs, and it carries no server internals.
            ("bad-request", err.to_string())
        };
        Self::new(status, kind, detail)
    }

    pub fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = self.to_json_string();
        let mut response = Response::builder()
            .status(status)
            .content_type(PROBLEM_JSON)
            .body(body);
        let headers = response.headers_mut();
        if let Some(challenge) = self.challenge.as_deref()
            && let Ok(value) = HeaderValue::from_str(challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read, so the connection cannot carry another
            // request; saying so keeps clients from reusing it and failing their next call.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A set of error statuses an operation can answer with, documented with the problem schema.
pub trait ErrorStatuses: Send + Sync + 'static {
    const STATUSES: &'static [u16];
}

/// The error half of an operation's result: an [`AppError`] plus, in the type, the statuses the
/// spec documents for that operation.
pub struct Failure<S>(AppError, PhantomData<S>);

/// What every handler returns.
pub type ApiResult<T, S> = Result<T, Failure<S>>;

impl<S> From<AppError> for Failure<S> {
    fn from(err: AppError) -> Self {
        Self(err, PhantomData)
    }
}

impl<S> From<Failure<S>> for poem::Error {
    fn from(failure: Failure<S>) -> Self {
        poem::Error::from(failure.0)
    }
}

fn describe(status: u16) -> &'static str {
    match status {
        400 => {
            "The request is malformed: unparsable JSON, a bad path or query parameter, or a cursor this API did not issue."
        }
        401 => {
            "No credentials, or an API key or access token that is unknown, revoked, expired or otherwise invalid. `WWW-Authenticate` carries the RFC 6750 challenge (`error=\"invalid_token\"` when credentials were sent)."
        }
        403 => {
            "The credentials are valid but lack the scope this operation needs; `WWW-Authenticate` names it (`error=\"insufficient_scope\"`)."
        }
        404 => "No resource has this id.",
        409 => {
            "The request conflicts with the current state: another user already has this email address (compared case-insensitively), or a key tried to revoke itself."
        }
        410 => {
            "The feed position is not available: its events were pruned (past `--events-retention-hours`) or it is newer than every event (another database, a restore). Resynchronise from `GET /api/v1/users`."
        }
        412 => {
            "`If-Match` named an ETag that is no longer current: the resource changed meanwhile. Nothing was changed; fetch it again."
        }
        413 => "The request body exceeds the configured size limit.",
        415 => "The request body is not JSON: send `Content-Type: application/json`.",
        422 => {
            "The body is well-formed JSON but invalid (`errors` lists every offending member), or an `Idempotency-Key` was reused with a different body."
        }
        428 => {
            "The server requires `If-Match` on writes (`--require-if-match`) and it was missing."
        }
        429 => {
            "Too many requests for this caller (or, unauthenticated, this IP) in the current window, or, for a stream, too many open streams for these credentials. `Retry-After` says when to retry."
        }
        431 => {
            "The request's headers are too large: more than 64 headers, or more than 16 KiB of them."
        }
        500 => {
            "The server failed; the cause is logged, never sent. Quote the body's `request_id` when reporting it."
        }
        503 => {
            "A dependency (the identity provider's signing keys, the database) is briefly unavailable, or, for a stream, every stream slot of the server is taken; retry after `Retry-After` seconds."
        }
        _ => "An error; the body says what went wrong.",
    }
}

fn header_meta(name: &str, description: &str) -> MetaHeader {
    MetaHeader {
        name: name.into(),
        description: Some(description.into()),
        required: true,
        deprecated: false,
        schema: String::schema_ref(),
    }
}

impl<S: ErrorStatuses> ApiResponse for Failure<S> {
    fn meta() -> MetaResponses {
        let responses = S::STATUSES
            .iter()
            .map(|&status| MetaResponse {
                description: describe(status),
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: PROBLEM_JSON,
                    schema: Problem::schema_ref(),
                }],
                headers: match status {
                    401 | 403 => vec![header_meta(
                        "WWW-Authenticate",
                        "The RFC 6750 Bearer challenge.",
                    )],
                    429 | 503 => vec![header_meta(
                        "Retry-After",
                        "Seconds to wait before retrying.",
                    )],
                    _ => Vec::new(),
                },
            })
            .collect();
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

/// Declares a marker type per family of operations, naming the errors each can return.
macro_rules! error_statuses {
    ($($(#[$doc:meta])* $name:ident: [$($status:literal),*];)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl ErrorStatuses for $name {
            const STATUSES: &'static [u16] = &[$($status),*];
        }
    )*};
}

error_statuses! {
    /// Liveness: only what any request can meet (oversized headers).
    LiveErrors: [431];
    /// Readiness: the database does not answer.
    ReadyErrors: [431, 503];
    /// Metrics behind a token.
    MetricsErrors: [401, 431];
    /// Listing: bad query parameters or cursor, auth.
    ListErrors: [400, 401, 403, 429, 431, 500, 503];
    /// Reading the change feed: a position no longer (or never) in it.
    FeedErrors: [400, 401, 403, 410, 429, 431, 500, 503];
    /// Reading one resource by id.
    OneErrors: [400, 401, 403, 404, 429, 431, 500, 503];
    /// Revoking an API key (not the one making the request).
    RevokeErrors: [400, 401, 403, 404, 409, 429, 431, 500, 503];
    /// Deleting one resource by id, possibly conditionally.
    DeleteErrors: [400, 401, 403, 404, 412, 428, 429, 431, 500, 503];
    /// Creating a resource from a body.
    CreateErrors: [400, 401, 403, 409, 413, 415, 422, 429, 431, 500, 503];
    /// Replacing or updating one resource from a body, possibly conditionally.
    WriteOneErrors: [400, 401, 403, 404, 409, 412, 413, 415, 422, 428, 429, 431, 500, 503];
}

#[cfg(test)]
mod tests {
    use sea_orm::DbErr;

    use super::*;
    use crate::domain::Scope;

    #[test]
    fn database_failures_reveal_nothing_of_the_cause() {
        let err = AppError::Database(DbErr::Custom("secret table xyz is corrupt".into()));
        let problem = Problem::from_app_error(&err);
        assert_eq!(problem.status, 500);
        assert_eq!(problem.detail, INTERNAL_DETAIL);
        assert!(!problem.to_json_string().contains("xyz"));
    }

    #[test]
    fn auth_problems_carry_rfc_6750_challenges() {
        let response = Problem::from_app_error(&AppError::MissingCredentials).into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let invalid = AppError::InvalidToken("bad \"quote\" é".into());
        let response = Problem::from_app_error(&invalid).into_response();
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\", error_description=\"bad 'quote' ?\""
        );
        let forbidden = AppError::Forbidden {
            needed: Scope::Admin,
        };
        let response = Problem::from_app_error(&forbidden).into_response();
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"insufficient_scope\", scope=\"admin\""
        );
    }
}
