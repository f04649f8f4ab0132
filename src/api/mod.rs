//! The HTTP API: the OpenAPI service (spec, routing, docs) and what every request passes through.

pub mod api_keys;
pub mod conditional;
pub mod cursor_param;
pub mod edge;
pub mod encode;
pub mod operations;
pub mod payload;
pub mod problem;
pub mod routes;
pub mod users;

use poem_openapi::{ExtraHeader, LicenseObject, OpenApiService, Tags};
use serde_json::{Value, json};

use self::cursor_param::CursorText;
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

**Authentication.** Every `/api/v1` data operation needs credentials in `Authorization: Bearer`: \
an API key (`uak_…`) or, where the deployment trusts an identity provider, an OAuth 2.0 access \
token. Scopes: `users:read` for reads, `users:write` for writes, `admin` for everything \
including key management. On first start the server prints an admin key once; create more with \
`POST /api/v1/api-keys` or `users-api keys create`. In this page, use **Authorize**.

**Errors.** Every 4xx and 5xx response is an RFC 9457 problem (`application/problem+json`) with \
`type`, `title`, `status`, `detail` and the `request_id` also sent as `X-Request-Id`; a \
validation failure lists each invalid member under `errors`.

**Listing.** `GET /api/v1/users` filters (`role`, `email`, `q`, `created_after`, \
`created_before`), sorts (`sort=-created_at`) and pages by opaque cursor: follow `next_cursor` or \
the `Link: rel=\"next\"` header.

**Concurrency and retries.** Single-user responses carry a strong `ETag`: send it in \
`If-None-Match` for a 304, or in `If-Match` to write only if nothing changed meanwhile (else \
412). Send an `Idempotency-Key` with `POST /api/v1/users` to make retries safe.

**Limits.** Requests are rate-limited per caller (`RateLimit-*` headers; 429 with \
`Retry-After`), bodies to 64 KiB by default.";

/// Page size when a listing's `limit` is omitted.
fn default_page_limit() -> u64 {
    50
}

/// The `cursor` query parameter of a listing; one this API did not issue for this very query
/// (same filters and sort) is a 400.
fn parse_cursor(raw: Option<&CursorText>, query: &ListQuery) -> Result<Option<Cursor>, AppError> {
    raw.map(|raw| Cursor::parse(&raw.0, query))
        .transpose()
        .map_err(AppError::BadRequest)
}

/// Every API of the service: one value for the spec and the routes alike.
pub type Apis = (UsersApi, ApiKeysApi, OperationsApi);

pub fn apis() -> Apis {
    (UsersApi, ApiKeysApi, OperationsApi)
}

/// The OpenAPI service: the source of the spec, the routes and the Swagger UI.
pub fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(apis(), "users-api", env!("CARGO_PKG_VERSION"))
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

/// The spec document: what poem-openapi derives from the code, plus the OpenAPI links it has
/// no attribute for. Links tell clients (and stateful fuzzers) that the `id` a create returns
/// feeds the single-resource operations.
pub fn spec_document() -> Value {
    let mut spec: Value =
        serde_json::from_str(&service().spec()).expect("poem-openapi emits valid JSON");
    let by_id = |operation: &str| {
        json!({
            "operationId": operation,
            "parameters": {"id": "$response.body#/id"},
        })
    };
    spec["paths"]["/api/v1/users"]["post"]["responses"]["201"]["links"] = json!({
        "GetUser": by_id("getUser"),
        "ReplaceUser": by_id("replaceUser"),
        "UpdateUser": by_id("updateUser"),
        "DeleteUser": by_id("deleteUser"),
    });
    // Relative to the document: whatever host serves the spec also serves the API.
    spec["servers"] = json!([{"url": "/", "description": "The host serving this document"}]);
    // Public operations say so: an empty requirement list means "no credentials needed".
    if let Some(paths) = spec["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            if path.starts_with(API_PREFIX) {
                continue;
            }
            for operation in item
                .as_object_mut()
                .into_iter()
                .flat_map(|ops| ops.values_mut())
            {
                operation["security"] = json!([]);
            }
        }
    }
    // No revoke link: revoking keeps the key's record for audit, so unlike a deleted user it
    // stays readable, and a link would tell stateful clients to expect it gone.
    spec["paths"]["/api/v1/api-keys"]["post"]["responses"]["201"]["links"] = json!({
        "GetApiKey": by_id("getApiKey"),
    });
    spec
}

/// The spec as `users-api openapi` prints it, `openapi/` commits it and the server serves it.
pub fn spec(yaml: bool) -> String {
    render_spec(&spec_document(), yaml)
}

/// A spec document as JSON (pretty) or YAML text.
pub fn render_spec(spec: &Value, yaml: bool) -> String {
    if yaml {
        serde_yaml::to_string(&spec).expect("a JSON document is valid YAML")
    } else {
        serde_json::to_string_pretty(&spec).expect("a JSON document serialises")
    }
}
