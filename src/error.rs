//! The one error type below the HTTP layer. Each case is a distinct kind of failure a client
//! can meet; `http::problem` decides how it reads on the wire (status, problem type, headers).

use sea_orm::DbErr;

use crate::domain::{FieldError, ParamError, Scope};

/// Everything that can go wrong in the service.
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
    /// A feed position before the oldest event kept: what came after it is lost to this reader.
    #[error(
        "the events after {after} are no longer kept (the feed resumes from {oldest} at the \
         earliest); resynchronise: take the feed's newest id (the `id:` line a new stream starts \
         with), list the users again, then follow the feed from that id"
    )]
    EventsExpired { after: i64, oldest: i64 },
    /// A feed position past the newest event: from another database, or from before a restore.
    #[error(
        "there is no event {after}: the newest is {newest}, so this position is from another \
         database or from before a restore; resynchronise: take the feed's newest id, list the \
         users again, then follow the feed from that id"
    )]
    EventsAhead { after: i64, newest: i64 },
    /// Every stream slot, of the server or of this caller, is taken.
    #[error("{limit} event streams are open {whose}, the most allowed; close one or retry later")]
    TooManyStreams { limit: usize, whose: &'static str },
    #[error("too many requests; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    Conflict(String),
    #[error("the request body failed validation")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    /// A parameter of the request (a listing's filter or cursor) that cannot be used as sent.
    #[error("`{}` {}", .0.name, .0.message)]
    BadParameter(ParamError),
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
    /// A failure of the database that is not the client's doing; its cause is logged, never sent.
    #[error("database error: {0}")]
    Database(#[source] DbErr),
}

impl AppError {
    /// Whose stream slots [`AppError::TooManyStreams`] speaks of.
    pub const STREAMS_OF_SERVER: &'static str = "on this server";
    pub const STREAMS_OF_CALLER: &'static str = "for these credentials";

    /// A create or write that would give a second user the same email address.
    pub fn email_taken() -> Self {
        AppError::Conflict("another user already has this email address".into())
    }

    /// A key asked to revoke itself.
    pub fn own_key_revoked() -> Self {
        AppError::Conflict("a key cannot revoke itself; revoke it with another admin key".into())
    }

    /// A stable slug naming the kind of problem; it becomes the problem `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            AppError::NotFound { .. } | AppError::KeyRevoked { .. } => "not-found",
            AppError::PreconditionFailed => "precondition-failed",
            AppError::PreconditionRequired => "precondition-required",
            AppError::IdempotencyKeyReused => "idempotency-key-reused",
            AppError::EventsExpired { .. } | AppError::EventsAhead { .. } => "events-expired",
            AppError::TooManyStreams { .. } => "too-many-streams",
            AppError::RateLimited { .. } => "rate-limited",
            AppError::Conflict(_) => "conflict",
            AppError::Validation(_) => "validation-error",
            AppError::BadRequest(_) | AppError::BadParameter(_) => "bad-request",
            AppError::PayloadTooLarge { .. } => "payload-too-large",
            AppError::MissingCredentials => "unauthorized",
            AppError::InvalidToken(_) => "invalid-token",
            AppError::Unavailable(_) => "unavailable",
            AppError::Forbidden { .. } => "insufficient-scope",
            AppError::Database(_) => "internal-error",
        }
    }
}
