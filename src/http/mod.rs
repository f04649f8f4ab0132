//! The HTTP layer: poem-openapi endpoints (which generate the routes, the spec and the docs),
//! the problem mapping, and the edge every request passes. Handlers parse, call one service
//! function and map its result to the operation's response.

mod api_keys;
mod conditional;
mod docs;
mod edge;
mod health;
mod metrics;
mod params;
mod payload;
mod problem;
mod security;
mod users;

use std::{sync::Arc, time::Duration};

use poem::{Endpoint, EndpointExt, http::Method, middleware::Cors};
use poem_openapi::{ExtraHeader, LicenseObject, OpenApiService, Tags};
use serde_json::{Value, json};

pub use self::security::OAuthFlowUrls;
use self::{
    api_keys::ApiKeysApi,
    edge::{AllowTable, Edge, render_errors},
    health::OperationsApi,
    metrics::Metrics,
    params::ParamRules,
    users::{SentPage, SentUser, UsersApi},
};
use crate::service::{Service, cache::ReadCache};

/// Where the versioned API lives.
pub const API_PREFIX: &str = "/api/v1";

/// How the HTTP layer behaves, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// A request not answered within this gets a 503.
    pub request_timeout: Duration,
    /// Take the client address from `X-Forwarded-For`.
    pub trust_forwarded_for: bool,
    /// When set, `/metrics` needs it as a bearer token.
    pub metrics_token: Option<String>,
    /// Browser origins allowed by CORS; none turns CORS off.
    pub cors_allow_origins: Vec<String>,
    /// Memory for users as GET by id sent them, and pages as listings did (0: off).
    pub user_cache_bytes: usize,
    pub page_cache_bytes: usize,
    /// The identity provider's endpoints, for the served spec.
    pub oauth_flows: Option<OAuthFlowUrls>,
}

/// What the handlers share: the service, and what the HTTP layer keeps of its own.
pub struct State {
    service: Arc<Service>,
    settings: Settings,
    /// Users as GET by id sent them, and pages as listings sent them, while the database is
    /// unchanged (see `service::cache`).
    users: Option<ReadCache<i64, SentUser>>,
    pages: Option<ReadCache<String, SentPage>>,
    metrics: Metrics,
}

impl State {
    pub fn new(service: Arc<Service>, settings: Settings) -> Arc<Self> {
        Arc::new(State {
            users: ReadCache::new(settings.user_cache_bytes),
            pages: ReadCache::new(settings.page_cache_bytes),
            metrics: Metrics::new(),
            service,
            settings,
        })
    }

    fn render_metrics(&self) -> String {
        let counts = |cache: Option<(u64, u64)>| cache;
        self.metrics.render(
            self.service.pool_connections(),
            &[
                ("user", counts(self.users.as_ref().map(ReadCache::counts))),
                ("page", counts(self.pages.as_ref().map(ReadCache::counts))),
            ],
        )
    }
}

#[derive(Tags)]
enum ApiTags {
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

/// Every API of the service: one value for the spec and the routes alike.
type Apis = (UsersApi, ApiKeysApi, OperationsApi);

/// The OpenAPI service: the source of the spec, the routes and the Swagger UI.
fn openapi() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (UsersApi, ApiKeysApi, OperationsApi),
        "users-api",
        env!("CARGO_PKG_VERSION"),
    )
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
        ExtraHeader::new("RateLimit-Remaining").description("Requests left in the current window."),
    )
    .extra_response_header::<Option<u64>, _>(
        ExtraHeader::new("RateLimit-Reset").description("Seconds until the window resets."),
    )
}

/// The spec document: what poem-openapi derives from the code, plus what it has no attribute
/// for (OpenAPI links, public operations, the servers), and the identity provider's endpoints
/// when `oauth` names them (the committed spec has placeholders).
pub fn spec_document(oauth: Option<&OAuthFlowUrls>) -> Value {
    let mut spec: Value =
        serde_json::from_str(&openapi().spec()).expect("poem-openapi emits valid JSON");
    // Links tell clients (and stateful fuzzers) that the `id` a create returns feeds the
    // single-resource operations.
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
    // No revoke link: revoking keeps the key's record for audit, so unlike a deleted user it
    // stays readable, and a link would tell stateful clients to expect it gone.
    spec["paths"]["/api/v1/api-keys"]["post"]["responses"]["201"]["links"] = json!({
        "GetApiKey": by_id("getApiKey"),
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
    if let Some(urls) = oauth {
        security::show_oauth_flows(&mut spec, urls);
    }
    spec
}

/// The spec as `users-api openapi` prints it and `openapi/` commits it.
pub fn spec(yaml: bool) -> String {
    render_spec(&spec_document(None), yaml)
}

/// A spec document as JSON (pretty) or YAML text.
fn render_spec(spec: &Value, yaml: bool) -> String {
    if yaml {
        serde_yaml::to_string(&spec).expect("a JSON document is valid YAML")
    } else {
        serde_json::to_string_pretty(&spec).expect("a JSON document serialises")
    }
}

/// The whole HTTP application: API, spec, docs, and the edge every request passes.
pub fn app(state: Arc<State>) -> impl Endpoint {
    let openapi = openapi();
    let document = spec_document(state.settings.oauth_flows.as_ref());
    let allow = AllowTable::new(&document, &[&["/"], docs::PAGES.as_slice()].concat());
    let params = Arc::new(ParamRules::new(&document));
    let routes = docs::routes(&openapi, &document).nest("/", openapi);
    let origins = &state.settings.cors_allow_origins;
    let cors = (!origins.is_empty()).then(|| cors(origins));
    routes
        .around(move |next, request| render_errors(next, request, params.clone()))
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .with(Edge {
            state,
            allow: Arc::new(allow),
        })
}

/// CORS for the configured origins only; what browsers may send and read is what the API uses.
fn cors(origins: &[String]) -> Cors {
    Cors::new()
        .allow_origins(origins.iter().map(String::as_str))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            "authorization",
            "content-type",
            "if-match",
            "if-none-match",
            "idempotency-key",
            "x-request-id",
        ])
        .expose_headers([
            "etag",
            "location",
            "link",
            "retry-after",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "idempotent-replayed",
            "x-request-id",
        ])
        .max_age(600)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::spec_document;
    use crate::domain::{Email, NewApiKey, Role, UserName};

    /// A spec constraint on a string: what a client validating against the spec checks.
    fn accepts(schema: &Value, text: &str) -> bool {
        let len = text.chars().count() as u64;
        let min = schema["minLength"].as_u64().unwrap_or(0);
        let max = schema["maxLength"].as_u64().unwrap_or(u64::MAX);
        let pattern = schema["pattern"]
            .as_str()
            .is_none_or(|pattern| regex::Regex::new(pattern).unwrap().is_match(text));
        (min..=max).contains(&len) && pattern
    }

    /// The spec's lengths and patterns are the domain's rules: every string the spec accepts,
    /// the server accepts, and the other way round, for every free-text field of every request
    /// schema; and the query parameters' limits are the fields' own.
    #[test]
    fn spec_constraints_are_the_domain_rules() {
        let spec = spec_document(None);
        let schemas = &spec["components"]["schemas"];
        type Rule = fn(&str) -> bool;
        let fields: [(&str, &str, usize, Rule); 5] = [
            ("UserInput", "name", UserName::MAX_CHARS, |t| {
                UserName::parse(t).is_ok()
            }),
            ("UserInput", "role", Role::MAX_CHARS, |t| {
                Role::parse(t).is_ok()
            }),
            ("UserPatch", "name", UserName::MAX_CHARS, |t| {
                UserName::parse(t).is_ok()
            }),
            ("UserPatch", "role", Role::MAX_CHARS, |t| {
                Role::parse(t).is_ok()
            }),
            ("ApiKeyInput", "name", NewApiKey::MAX_NAME_CHARS, |t| {
                NewApiKey::parse_name(t).is_ok()
            }),
        ];
        for (schema, field, max, rule) in fields {
            let property = &schemas[schema]["properties"][field];
            assert_eq!(property["maxLength"], max, "{schema}.{field}");
            let mut samples: Vec<String> = [
                "", " ", "a", " a ", "\t", "\ta", "a\u{0}b", "a\u{85}", "Zoë",
            ]
            .map(String::from)
            .into();
            samples.extend(
                ["\u{2028}", " \u{3000}x", "a\u{7f}", "\u{a0}", "é\u{301}"].map(String::from),
            );
            for len in [max - 1, max, max + 1] {
                samples.push("é".repeat(len));
                samples.push(format!(" {} ", "x".repeat(len.saturating_sub(2))));
                samples.push(format!("{}\u{1}", "x".repeat(len - 1)));
            }
            for sample in samples {
                assert_eq!(
                    accepts(property, &sample),
                    rule(&sample),
                    "{schema}.{field} on {sample:?}"
                );
            }
        }
        for schema in ["UserInput", "UserPatch"] {
            assert_eq!(
                schemas[schema]["properties"]["email"]["maxLength"],
                Email::MAX_CHARS
            );
        }
        let parameters = spec["paths"]["/api/v1/users"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let limit_of = |name: &str| {
            parameters
                .iter()
                .find(|parameter| parameter["name"] == name)
                .map(|parameter| parameter["schema"]["maxLength"].clone())
                .unwrap()
        };
        assert_eq!(limit_of("role"), Role::MAX_CHARS);
        assert_eq!(limit_of("q"), UserName::MAX_CHARS);
        assert_eq!(limit_of("email"), Email::MAX_CHARS);
    }
}
