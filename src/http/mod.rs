//! The HTTP layer: poem-openapi endpoints (which generate the routes, the spec and the docs),
//! the problem mapping, and the edge every request passes. Handlers parse, call one service
//! function and map its result to the operation's response.

mod api_keys;
mod conditional;
mod docs;
mod edge;
mod events;
mod examples;
mod health;
mod metrics;
mod params;
mod payload;
mod problem;
mod security;
mod spec;
mod users;

use std::{sync::Arc, time::Duration};

use poem::{Endpoint, EndpointExt, http::Method, middleware::Cors};
use poem_openapi::Tags;

pub use self::{
    edge::Forwarded,
    security::OAuthFlowUrls,
    spec::{spec, spec_document},
};
use self::{
    edge::{AllowTable, Edge, render_errors},
    metrics::Metrics,
    params::ParamRules,
    spec::{openapi, render_spec},
    users::{SentPage, SentUser},
};
use crate::{
    connections::Hangups,
    service::{Service, cache::ReadCache},
};

/// Where the versioned API lives.
pub const API_PREFIX: &str = "/api/v1";

/// How the HTTP layer behaves, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// A request not answered within this gets a 503.
    pub request_timeout: Duration,
    /// Whose word on the client's address (`X-Forwarded-For`) to take.
    pub forwarded: Forwarded,
    /// When set, `/metrics` needs it as a bearer token.
    pub metrics_token: Option<String>,
    /// Browser origins allowed by CORS; none turns CORS off.
    pub cors_allow_origins: Vec<String>,
    /// Memory for users as GET by id sent them, and pages as listings did (0: off).
    pub user_cache_bytes: usize,
    pub page_cache_bytes: usize,
    /// The identity provider's endpoints, for the served spec.
    pub oauth_flows: Option<OAuthFlowUrls>,
    /// How often an event stream with nothing to send sends a comment.
    pub stream_heartbeat: Duration,
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
    /// Which connections' clients hung up, for the event streams they leave.
    hangups: Hangups,
}

impl State {
    pub fn new(service: Arc<Service>, settings: Settings, hangups: Hangups) -> Arc<Self> {
        Arc::new(State {
            users: ReadCache::new(settings.user_cache_bytes),
            pages: ReadCache::new(settings.page_cache_bytes),
            metrics: Metrics::new(),
            service,
            settings,
            hangups,
        })
    }

    fn render_metrics(&self) -> String {
        let counts = |cache: Option<(u64, u64)>| cache;
        self.metrics.render(
            self.service.pool_connections(),
            self.service.open_streams(),
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
    /// The change feed: every committed change of a user, as pages or as a live stream.
    Events,
    /// Manage API keys (needs the `admin` scope).
    #[oai(rename = "API keys")]
    ApiKeys,
    /// Liveness and readiness for load balancers and orchestrators, and Prometheus metrics
    /// for monitoring. No credentials needed, except for `/metrics` where a token is configured.
    #[oai(rename = "Health and metrics")]
    HealthAndMetrics,
}

const HEALTH_TAG: &str = "Health and metrics";

/// Page size when a listing's `limit` is omitted.
fn default_page_limit() -> u64 {
    50
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
