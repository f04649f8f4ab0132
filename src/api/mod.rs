//! The HTTP API: the OpenAPI service (spec, routing, docs) and what every request passes through.

pub mod api_keys;
pub mod conditional;
pub mod edge;
pub mod operations;
pub mod payload;
pub mod problem;
pub mod users;

use poem_openapi::{ExtraHeader, LicenseObject, OpenApiService, Tags};

use crate::{
    domain::{Cursor, ListQuery},
    error::AppError,
};

pub use api_keys::ApiKeysApi;
pub use operations::OperationsApi;
pub use users::UsersApi;

/// Where the versioned API lives.
pub const API_PREFIX: &str = "/api/v1";

#[derive(Tags)]
pub enum ApiTags {
    /// Create, read, update and delete users.
    Users,
    /// Manage API keys (needs the `admin` scope).
    #[oai(rename = "API keys")]
    ApiKeys,
    /// Health checks and metrics, for load balancers and monitoring; public.
    Operations,
}

const DESCRIPTION: &str = "\
A versioned REST API for a *users* resource.

**Authentication.** Every `/api/v1/users` operation needs an API key sent as \
`Authorization: Bearer uak_…`. Keys carry scopes: `users:read` for reads, `users:write` for \
writes, `admin` for everything. On first start the server prints an admin key once; create more \
with `users-api keys create --name NAME --scope SCOPE`. In this page, use **Authorize**.

**Errors.** Every 4xx and 5xx response is an RFC 9457 problem (`application/problem+json`) with \
`type`, `title`, `status`, `detail` and the `request_id` also sent as `X-Request-Id`; a \
validation failure lists each invalid member under `errors`.

**Pagination.** `GET /api/v1/users` returns pages in id order; follow `next_cursor`.";

/// Page size when a listing's `limit` is omitted.
fn default_page_limit() -> u64 {
    50
}

/// The `cursor` query parameter of a listing; one this API did not issue for this very query
/// (same filters and sort) is a 400.
fn parse_cursor(raw: Option<&str>, query: &ListQuery) -> Result<Option<Cursor>, AppError> {
    raw.map(|raw| Cursor::parse(raw, query))
        .transpose()
        .map_err(AppError::BadRequest)
}

/// The OpenAPI service: the source of the spec, the routes and the Swagger UI.
pub fn service() -> OpenApiService<(UsersApi, ApiKeysApi, OperationsApi), ()> {
    let api = (UsersApi, ApiKeysApi, OperationsApi);
    OpenApiService::new(api, "users-api", env!("CARGO_PKG_VERSION"))
        .description(DESCRIPTION)
        .license(LicenseObject::new("MIT").url("https://spdx.org/licenses/MIT.html"))
        .extra_response_header::<String, _>(ExtraHeader::new("X-Request-Id").description(
            "The request's id: the caller's `X-Request-Id` if sane, else a new UUID. \
             Also in problem bodies and log lines.",
        ))
        .extra_response_header::<Option<u64>, _>(
            ExtraHeader::new("RateLimit-Limit")
                .description("Requests allowed per window to this caller (absent when unlimited)."),
        )
        .extra_response_header::<Option<u64>, _>(
            ExtraHeader::new("RateLimit-Remaining")
                .description("Requests left in the current window."),
        )
        .extra_response_header::<Option<u64>, _>(
            ExtraHeader::new("RateLimit-Reset").description("Seconds until the window resets."),
        )
}

/// The spec as `users-api openapi` prints it and `openapi/` commits it.
pub fn spec(yaml: bool) -> String {
    let service = service();
    if yaml {
        service.spec_yaml()
    } else {
        service.spec()
    }
}
