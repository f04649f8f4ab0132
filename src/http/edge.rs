//! What every request passes through on its way in and out: a request id, limits (headers,
//! rate, time), security headers, one log line and one metrics observation; and the rendering
//! of every error and caught panic, the framework's own included, as a problem.

use std::{
    net::IpAddr,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Instant,
};

use futures_util::FutureExt;
use poem::{
    Endpoint, IntoResponse, Middleware, Request, Response,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
};
use poem_openapi::{
    OperationId,
    error::{ParseParamError, ParsePathError},
};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    State,
    params::{ParamFailure, ParamRules, template_matches},
    problem::{INTERNAL_DETAIL, PROBLEM_JSON, Problem},
    security::bearer_token,
};
use crate::{domain::Subject, error::AppError, service::Decision};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the edge learns of a request, attached once for whatever needs it.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The id the request is known by, in its log lines and its problem.
    pub id: Arc<str>,
    /// Where the request came from: the peer, or the address a trusted proxy names
    /// ([`Forwarded`]).
    pub client_ip: Option<IpAddr>,
    /// Filled by whoever counts the request against a rate limit; read to set `RateLimit-*`.
    pub rate_limit: RateLimitSlot,
    /// Who called, once the security scheme has checked the credentials; logged with the
    /// request.
    pub caller: Arc<OnceLock<Subject>>,
}

/// A rate-limit decision, shared between the edge and the security scheme.
#[derive(Debug, Clone, Default)]
pub struct RateLimitSlot(Arc<Mutex<Option<Decision>>>);

impl RateLimitSlot {
    pub fn set(&self, decision: Decision) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(decision);
    }

    fn get(&self) -> Option<Decision> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Beyond these, a request's headers are refused with 431 (hyper's own limit, 100 headers,
/// would answer without a problem body).
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A caller-supplied id is kept when it is short and plain enough to be safe in logs and
/// headers; anything else is replaced by a new UUID.
fn request_id(request: &Request) -> Arc<str> {
    let incoming = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            (1..=128).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    match incoming {
        Some(id) => id.into(),
        None => Uuid::new_v4().to_string().into(),
    }
}

/// Whose word on the client's address to take: a proxy in front appends the address it
/// received the request from to `X-Forwarded-For`; everything left of that is the client's
/// own say.
#[derive(Debug, Clone, Default)]
pub enum Forwarded {
    /// The peer's address; the header is ignored.
    #[default]
    Ignore,
    /// One proxy in front: the right-most address of the header.
    LastHop,
    /// Proxies at these addresses: the right-most address, the peer's included, not among them.
    TrustedProxies(Vec<ipnet::IpNet>),
}

/// The client's address, by `forwarded`; an IPv4 address in IPv6 form (`::ffff:1.2.3.4`) as
/// IPv4, so that one client is one address.
fn client_ip(request: &Request, forwarded: &Forwarded) -> Option<IpAddr> {
    let peer = request
        .remote_addr()
        .as_socket_addr()
        .map(|addr| addr.ip().to_canonical());
    let hops = || {
        request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|value| value.to_str().unwrap_or_default().split(','))
            .map(|hop| {
                hop.trim()
                    .parse::<IpAddr>()
                    .ok()
                    .map(|ip| ip.to_canonical())
            })
    };
    match forwarded {
        Forwarded::Ignore => peer,
        // A proxy writes a valid address; anything else was not written by one.
        Forwarded::LastHop => hops().next_back().flatten().or(peer),
        Forwarded::TrustedProxies(proxies) => {
            let trusted = |ip: &IpAddr| proxies.iter().any(|net| net.contains(ip));
            let mut nearest = peer;
            for hop in std::iter::once(peer).chain(hops().rev()) {
                match hop {
                    Some(ip) if trusted(&ip) => nearest = Some(ip),
                    Some(ip) => return Some(ip),
                    // Unreadable: what a trusted proxy received from, which is all we know.
                    None => return nearest,
                }
            }
            nearest
        }
    }
}

fn too_many_header_bytes(headers: &HeaderMap) -> bool {
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES
}

/// The answer to a request whose headers exceed the limits.
pub fn headers_too_large() -> Problem {
    Problem::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers-too-large",
        format!("send at most {MAX_HEADERS} headers totalling {MAX_HEADER_BYTES} bytes"),
    )
}

/// Health checks and metrics are for machines polling from few addresses: never limited.
/// Exactly these paths: `/health/../api/v1/users` is not a health check.
fn exempt_from_limits(path: &str) -> bool {
    matches!(path, "/health/live" | "/health/ready" | "/metrics")
}

/// A label for requests no operation claimed.
fn route_label(path: &str, status: StatusCode) -> &'static str {
    if path == "/" || path.starts_with("/docs") || path == "/redoc" {
        "docs"
    } else if path.ends_with("/openapi.json") || path.ends_with("/openapi.yaml") {
        "spec"
    } else if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
        "unmatched"
    } else {
        "other"
    }
}

/// `problem` as the response to the request `request_id`, which it names.
fn problem_response(problem: Problem, request_id: &str) -> Response {
    Problem {
        request_id: Some(request_id.to_owned()),
        ..problem
    }
    .into_response()
}

/// An error as a problem response, keeping the operation it came from. Server errors are
/// logged with their cause, which the client never sees.
fn error_response(err: poem::Error, request_id: &str) -> Response {
    let operation = err.data::<OperationId>().copied();
    let problem = Problem::from_error(&err);
    if problem.status >= 500 {
        tracing::error!(error = %err, "request failed");
    }
    let mut response = problem_response(problem, request_id);
    if let Some(operation) = operation {
        response.set_data(operation);
    }
    response
}

/// Error responses made as plain responses (a CORS refusal) get the problem shape too, so
/// clients parse one error format.
fn plain_error_problem(response: &Response) -> Option<Problem> {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem || !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), "request failed");
        return Some(Problem::new(status, "internal-error", INTERNAL_DETAIL));
    }
    Some(Problem::new(
        status,
        "client-error",
        "the request was rejected",
    ))
}

/// Every parameter the request got wrong, when `err` is the framework refusing one.
fn parameter_failures(
    err: &poem::Error,
    method: &Method,
    uri: &Uri,
    params: &ParamRules,
) -> Option<Vec<ParamFailure>> {
    let refused = match (
        err.downcast_ref::<ParseParamError>(),
        err.downcast_ref::<ParsePathError>(),
    ) {
        (Some(param), _) => (param.name, param.reason.as_str()),
        (None, Some(path)) => (path.name, path.reason.as_str()),
        (None, None) => return None,
    };
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(uri.query().unwrap_or_default()).unwrap_or_default();
    let failures = params.failures(method.as_str(), uri.path(), &query, refused);
    (!failures.is_empty()).then_some(failures)
}

/// Renders what the endpoints below answer, errors and panics included, as responses: below
/// CORS, so that CORS decorates problems too. A parameter the framework refused becomes a
/// problem that names every bad parameter of the request (`params`).
pub async fn render_errors<E: Endpoint>(
    next: E,
    request: Request,
    params: Arc<ParamRules>,
) -> poem::Result<Response> {
    let request_id = request
        .extensions()
        .get::<RequestContext>()
        .map(|context| context.id.clone())
        .unwrap_or_default();
    let (method, uri) = (request.method().clone(), request.uri().clone());
    Ok(
        match AssertUnwindSafe(next.call(request)).catch_unwind().await {
            Ok(Ok(output)) => output.into_response(),
            Ok(Err(err)) => match parameter_failures(&err, &method, &uri, &params) {
                Some(failures) => {
                    let problem = Problem::bad_parameters(failures);
                    let mut response = problem_response(problem, &request_id);
                    if let Some(operation) = err.data::<OperationId>() {
                        response.set_data(*operation);
                    }
                    response
                }
                None => error_response(err, &request_id),
            },
            // The panic hook has printed the message; the client gets a plain 500.
            Err(_panic) => {
                tracing::error!("request failed: a handler panicked");
                let problem = Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal-error",
                    INTERNAL_DETAIL,
                );
                problem_response(problem, &request_id)
            }
        },
    )
}

/// The outermost layer (see the module's documentation).
pub struct Edge {
    pub state: Arc<State>,
    pub allow: Arc<AllowTable>,
}

impl<E: Endpoint> Middleware<E> for Edge {
    type Output = EdgeEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        EdgeEndpoint {
            inner,
            state: self.state.clone(),
            allow: self.allow.clone(),
        }
    }
}

pub struct EdgeEndpoint<E> {
    inner: E,
    state: Arc<State>,
    allow: Arc<AllowTable>,
}

impl<E: Endpoint> Endpoint for EdgeEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut request: Request) -> poem::Result<Response> {
        let id = request_id(&request);
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let authenticated = request.headers().contains_key(header::AUTHORIZATION);
        let bearer = bearer_token(request.headers()).is_some();
        let ip = client_ip(&request, &self.state.settings.forwarded);
        let slot = RateLimitSlot::default();
        let caller = Arc::new(OnceLock::new());
        request.extensions_mut().insert(RequestContext {
            id: id.clone(),
            client_ip: ip,
            rate_limit: slot.clone(),
            caller: caller.clone(),
        });
        request.extensions_mut().insert(self.state.clone());
        let span = tracing::info_span!("request", request_id = &*id);
        async move {
            let started = Instant::now();
            let mut response = self.answer(request, &id, &path, bearer, ip, &slot).await;
            if let Some(problem) = plain_error_problem(&response) {
                response = problem_response(problem, &id);
            }
            self.decorate(&mut response, &id, &path, authenticated, &slot);
            let status = response.status();
            let operation = response
                .data::<OperationId>()
                .map_or_else(|| route_label(&path, status), |op| op.0);
            let elapsed = started.elapsed();
            self.state
                .metrics
                .observe(operation, status, elapsed.as_secs_f64());
            // Who and from where: the audit name (never a secret) and the client address
            // (the forwarded one when it is trusted); absent when unknown.
            tracing::info!(
                method = method.as_str(),
                path = path.as_str(),
                status = status.as_u16(),
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                operation,
                principal = caller.get().map(tracing::field::display),
                client = ip.map(tracing::field::display),
                "request"
            );
            Ok(response)
        }
        .instrument(span)
        .await
    }
}

impl<E: Endpoint> EdgeEndpoint<E> {
    /// The response to a request: refused at the edge (headers too large, rate limit), or the
    /// endpoints' own within the time limit.
    async fn answer(
        &self,
        request: Request,
        id: &str,
        path: &str,
        bearer: bool,
        ip: Option<IpAddr>,
        slot: &RateLimitSlot,
    ) -> Response {
        let settings = &self.state.settings;
        if too_many_header_bytes(request.headers()) {
            return problem_response(headers_too_large(), id);
        }
        // Without bearer credentials (none, or another scheme) the caller is known only by
        // address; with them, the security scheme counts the request against the principal
        // (or, if they are bad, the address).
        if !bearer
            && !exempt_from_limits(path)
            && let Some(ip) = ip
            && let Some(decision) = self
                .state
                .service
                .count_request(crate::service::Bucket::Ip(ip))
                .await
        {
            slot.set(decision);
            if !decision.allowed {
                let retry_after = decision.reset.max(1);
                return error_response(AppError::RateLimited { retry_after }.into(), id);
            }
        }
        // Boxed: the future of everything below is large, and inline it would make this one
        // as large, copied whole each time poem moves it (about 11,000 instructions a request,
        // counted by benches/cost.py).
        let inner = Box::pin(self.inner.call(request));
        match tokio::time::timeout(settings.request_timeout, inner).await {
            Ok(Ok(output)) => output.into_response(),
            Ok(Err(err)) => error_response(err, id),
            Err(_) => {
                let secs = settings.request_timeout.as_secs();
                tracing::error!(timeout_secs = secs, "request timed out");
                let timed_out =
                    AppError::Unavailable(format!("the request did not complete within {secs} s"));
                error_response(timed_out.into(), id)
            }
        }
    }

    /// The headers every response carries.
    fn decorate(
        &self,
        response: &mut Response,
        id: &str,
        path: &str,
        authenticated: bool,
        slot: &RateLimitSlot,
    ) {
        let method_not_allowed = response.status() == StatusCode::METHOD_NOT_ALLOWED;
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(id) {
            headers.insert(REQUEST_ID, value);
        }
        if method_not_allowed
            && let Some(methods) = self.allow.allowed(path)
            && let Ok(value) = HeaderValue::from_str(methods)
        {
            headers.insert(header::ALLOW, value);
        }
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if !self.state.settings.cors_allow_origins.is_empty() {
            // With CORS on, what an answer says depends on `Origin`: a shared cache must not
            // give one origin's answer (or an answer without CORS headers) to another.
            let varies_by_origin = headers.get_all(header::VARY).iter().any(|value| {
                value.to_str().is_ok_and(|names| {
                    names
                        .split(',')
                        .any(|name| name.trim().eq_ignore_ascii_case("origin"))
                })
            });
            if !varies_by_origin {
                headers.append(header::VARY, HeaderValue::from_static("Origin"));
            }
        }
        if authenticated && !headers.contains_key(header::CACHE_CONTROL) {
            // Responses to credentialed requests are for that caller only: no shared caches.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if let Some(decision) = slot.get() {
            for (name, value) in [
                ("ratelimit-limit", decision.limit),
                ("ratelimit-remaining", decision.remaining),
                ("ratelimit-reset", decision.reset),
            ] {
                headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
            }
        }
    }
}

/// Which methods each path answers, for the `Allow` header a 405 must carry (RFC 9110 §15.5.6).
pub struct AllowTable {
    routes: Vec<(Vec<String>, String)>,
}

impl AllowTable {
    /// From the spec's paths (`{id}` matches any one segment), plus the GET-only pages outside it.
    pub fn new(spec: &serde_json::Value, extra_get_paths: &[&str]) -> Self {
        let mut routes = Vec::new();
        let mut add = |path: &str, mut methods: Vec<String>| {
            if methods.iter().any(|m| m == "GET") {
                methods.push("HEAD".into());
            }
            let segments = path.split('/').map(str::to_owned).collect();
            routes.push((segments, methods.join(", ")));
        };
        if let Some(paths) = spec["paths"].as_object() {
            for (path, item) in paths {
                let methods = item
                    .as_object()
                    .map(|ops| ops.keys().map(|m| m.to_uppercase()).collect())
                    .unwrap_or_default();
                add(path, methods);
            }
        }
        for path in extra_get_paths {
            add(path, vec!["GET".into()]);
        }
        AllowTable { routes }
    }

    pub fn allowed(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.routes
            .iter()
            .find(|(template, _)| template_matches(template, &segments))
            .map(|(_, methods)| methods.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_table_matches_paths_with_variables() {
        let spec = serde_json::json!({"paths": {
            "/api/v1/users": {"get": {}, "post": {}},
            "/api/v1/users/{id}": {"get": {}, "delete": {}},
        }});
        let table = AllowTable::new(&spec, &["/redoc"]);
        assert_eq!(table.allowed("/api/v1/users"), Some("GET, POST, HEAD"));
        assert_eq!(table.allowed("/api/v1/users/7"), Some("GET, DELETE, HEAD"));
        assert_eq!(table.allowed("/redoc"), Some("GET, HEAD"));
        assert_eq!(table.allowed("/api/v1/users/7/x"), None);
    }

    #[test]
    fn request_ids_are_kept_when_safe_and_replaced_otherwise() {
        let with = |value: &str| {
            request_id(&Request::builder().header(REQUEST_ID, value).finish()).to_string()
        };
        assert_eq!(with("trace-abc.123:4_5"), "trace-abc.123:4_5");
        for hostile in ["a b", "x\"<script>", &"a".repeat(129)] {
            let replaced = with(hostile);
            assert_ne!(replaced, hostile);
            assert!(Uuid::parse_str(&replaced).is_ok());
        }
    }
}
