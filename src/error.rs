//! The one error type below the handlers, and how each case reads to a client.

use poem::{error::ResponseError, http::StatusCode};
use sea_orm::DbErr;

use crate::domain::Scope;

/// A problem with one member of a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON Pointer (RFC 6901) to the offending member: `/name`, or `` for the whole body.
    pub pointer: String,
    pub message: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// Everything that can go wrong in the service, each case a distinct client-facing problem.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{resource} {id} does not exist")]
    NotFound { resource: &'static str, id: i64 },
    /// A revoked key is gone as a resource; its record stays in the listing for audit.
    #[error("API key {id} has been revoked; its record remains in the key listing")]
    KeyRevoked { id: i64 },
    /// `If-Match` named a version that is no longer current.
    #[error("the resource has changed since the ETag in `If-Match` was issued; fetch it again")]
    PreconditionFailed,
    /// The server requires `If-Match` on this write and it was missing.
    #[error("this write needs an `If-Match` header with the resource's current ETag")]
    PreconditionRequired,
    /// An `Idempotency-Key` was reused with a different request body.
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("too many requests; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    Conflict(String),
    #[error("the request body failed validation")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// No usable `Authorization: Bearer` header at all.
    #[error(
        "this operation needs credentials: send `Authorization: Bearer <API key or access token>`"
    )]
    MissingCredentials,
    /// Credentials were presented but are not acceptable (RFC 6750 `invalid_token`).
    #[error("{0}")]
    InvalidToken(String),
    #[error("this operation needs the `{needed}` scope")]
    Forbidden { needed: Scope },
    /// A dependency is briefly out of reach; retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(#[source] DbErr),
}

impl AppError {
    /// A stable slug naming the kind of problem; it becomes the problem `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            AppError::NotFound { .. } | AppError::KeyRevoked { .. } => "not-found",
            AppError::PreconditionFailed => "precondition-failed",
            AppError::PreconditionRequired => "precondition-required",
            AppError::IdempotencyKeyReused => "idempotency-key-reused",
            AppError::RateLimited { .. } => "rate-limited",
            AppError::Conflict(_) => "conflict",
            AppError::Validation(_) => "validation-error",
            AppError::BadRequest(_) => "bad-request",
            AppError::PayloadTooLarge { .. } => "payload-too-large",
            AppError::MissingCredentials => "unauthorized",
            AppError::InvalidToken(_) => "invalid-token",
            AppError::Unavailable(_) => "unavailable",
            AppError::Forbidden { .. } => "insufficient-scope",
            AppError::Database(_) => "internal-error",
        }
    }
}

impl AppError {
    /// The RFC 6750 `WWW-Authenticate` challenge that goes with this error, if any.
    pub fn challenge(&self) -> Option<String> {
        match self {
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

impl From<DbErr> for AppError {
    /// Losing the database is an outage to wait out (503), not a bug (500).
    fn from(err: DbErr) -> Self {
        if is_transient(&err) {
            tracing::warn!(error = %err, "database unavailable");
            AppError::Unavailable("the database is unavailable; retry shortly".into())
        } else {
            AppError::Database(err)
        }
    }
}

/// Whether a database error means "not reachable right now" rather than "this query is wrong".
pub fn is_transient(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx::Error as Sqlx};
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(sqlx)) | DbErr::Query(RuntimeErr::SqlxError(sqlx)) => {
            match sqlx.as_ref() {
                Sqlx::Io(_)
                | Sqlx::Tls(_)
                | Sqlx::Protocol(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed => true,
                // SQLSTATE classes 08 (connection exception), 53 (insufficient resources) and
                // 57 (operator intervention: shutdown, statement timeout).
                Sqlx::Database(db) => db.code().is_some_and(|code| {
                    ["08", "53", "57"]
                        .iter()
                        .any(|class| code.starts_with(class))
                }),
                _ => false,
            }
        }
        _ => false,
    }
}

impl ResponseError for AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::NotFound { .. } | AppError::KeyRevoked { .. } => StatusCode::NOT_FOUND,
            AppError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            AppError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            AppError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::MissingCredentials | AppError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AppError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
