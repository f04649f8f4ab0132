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
    #[error("{0}")]
    Conflict(String),
    #[error("the request body failed validation")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(String),
    #[error("this operation needs the `{needed}` scope")]
    Forbidden { needed: Scope },
    #[error("database error: {0}")]
    Database(#[source] DbErr),
}

impl AppError {
    /// A stable slug naming the kind of problem; it becomes the problem `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            AppError::NotFound { .. } => "not-found",
            AppError::Conflict(_) => "conflict",
            AppError::Validation(_) => "validation-error",
            AppError::BadRequest(_) => "bad-request",
            AppError::PayloadTooLarge { .. } => "payload-too-large",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Forbidden { .. } => "insufficient-scope",
            AppError::Database(_) => "internal-error",
        }
    }
}

impl From<DbErr> for AppError {
    fn from(err: DbErr) -> Self {
        AppError::Database(err)
    }
}

impl ResponseError for AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::NotFound { .. } => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AppError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
