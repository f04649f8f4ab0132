//! What every request passes through on its way in and out: a request id, limits (headers,
//! rate, time), security headers, one log line and one metrics observation, and the rendering
//! of every error and caught panic, the framework's own included, as a problem.

use std::{
    net::IpAddr,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures_util::FutureExt;
use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
};
use poem_openapi::OperationId;
use uuid::Uuid;

use super::problem::{INTERNAL_DETAIL, PROBLEM_JSON, Problem};
use crate::{
    error::AppError,
    rate_limit::{Bucket, Decision},
    startup::AppState,
    telemetry::{self, RequestLine},
};

// A `HeaderName` made at compile time: as a `&str`, every lookup and insert parsed the name
// again (callgrind: ~300 instructions a request).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the edge learns of a request, attached once for whatever needs it.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The id the request is known by; one string, shared with the task-local that names the
    /// request's log lines and with the request line, rather than a copy for each.
    pub id: Arc<str>,
    /// Where the request came from: the peer, or with `--trust-forwarded-for` the first
    /// `X-Forwarded-For` hop.
    pub client_ip: Option<IpAddr>,
    /// Filled by whoever counts the request against a rate limit; read to set `RateLimit-*`.
    pub rate_limit: RateLimitSlot,
}

/// A rate-limit decision, shared between the edge and the security scheme.
#[derive(Debug, Clone, Default)]
pub struct RateLimitSlot(Arc<Mutex<Option<Decision>>>);

impl RateLimitSlot {
    pub fn set(&self, decision: Decision) {
        *self.0.lock().expect("slot lock") = Some(decision);
    }

    fn get(&self) -> Option<Decision> {
        *self.0.lock().expect("slot lock")
    }
}

/// Beyond these, a request's headers are refused with 431 (hyper's own limit, 100 headers,
/// would answer without a problem body).
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A caller-supplied id is kept when it is short and plain enough to be safe in logs and
/// headers; anything else is replaced.
fn incoming_request_id(request: &Request) -> Option<Arc<str>> {
    let value = request.headers().get(REQUEST_ID)?.to_str().ok()?;
    let sane = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    sane.then(|| value.into())
}

/// A new UUID, encoded directly rather than through `Display`.
fn new_request_id() -> Arc<str> {
    Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .into()
}

fn client_ip(request: &Request, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    request.remote_addr().as_socket_addr().map(|addr| addr.ip())
}

fn headers_too_large(headers: &HeaderMap) -> bool {
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES
}

/// Health checks and metrics are for machines polling from few addresses: never limited.
fn exempt_from_limits(path: &str) -> bool {
    path.starts_with("/health/") || path == "/metrics"
}

/// A label for requests no operation claimed.
fn route_label(path: &str, status: StatusCode) -> &'static str {
    if path == "/" || path.starts_with("/docs") {
        "docs"
    } else if path.ends_with("/openapi.json") || path.ends_with("/openapi.yaml") {
        "spec"
    } else if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
        "unmatched"
    } else {
        "other"
    }
}

/// Renders an error that reached the edge as a problem, keeping the operation it came from.
/// Server errors are logged with their cause (which the client never sees).
pub fn error_response(err: poem::Error, request_id: &str) -> Response {
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

/// `problem` as the response to the request `request_id`, which it names.
fn problem_response(problem: Problem, request_id: &str) -> Response {
    Problem {
        request_id: Some(request_id.to_owned()),
        ..problem
    }
    .into_response()
}

fn app_error_response(err: AppError, request_id: &str) -> Response {
    error_response(poem::Error::from(err), request_id)
}

/// Below CORS: turns errors into problem responses so CORS can decorate them too.
pub async fn render_errors<E: Endpoint>(next: E, request: Request) -> poem::Result<Response> {
    let request_id = request
        .extensions()
        .get::<RequestContext>()
        .map(|context| context.id.clone())
        .unwrap_or_default();
    Ok(match next.call(request).await {
        Ok(output) => output.into_response(),
        Err(err) => error_response(err, &request_id),
    })
}

/// The outermost layer, which also renders errors, catches panics and attaches the
/// application state: one struct rather than a stack of poem middleware, because each layer
/// moves the request and its future once more and `around` clones what its closure holds
/// (measured with callgrind: 75.3k → 73.3k instructions per GET by id, 48.2k → 44.8k per
/// `/health/live`).
pub struct Edge<E> {
    inner: E,
    state: AppState,
    allow: AllowTable,
}

impl<E> Edge<E> {
    pub fn new(inner: E, state: AppState, allow: AllowTable) -> Self {
        Edge {
            inner,
            state,
            allow,
        }
    }
}

impl<E: Endpoint> Endpoint for Edge<E> {
    type Output = Response;

    // Not an `async fn`: one keeps each argument twice in its future (the argument and the
    // local it is moved to), and the request is 472 bytes, copied at each move. Here the
    // request moves once, into the call of the routes below, made (not yet run) before the
    // future is; the future holds that call, boxed. Measured with callgrind: see the README.
    fn call(&self, mut request: Request) -> impl Future<Output = poem::Result<Response>> + Send {
        let state = &self.state;
        let request_id = incoming_request_id(&request).unwrap_or_else(new_request_id);
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let authenticated = request.headers().contains_key(header::AUTHORIZATION);
        let ip = client_ip(&request, state.policy.trust_forwarded_for);
        let slot = RateLimitSlot::default();
        let extensions = request.extensions_mut();
        extensions.insert(RequestContext {
            id: request_id.clone(),
            client_ip: ip,
            rate_limit: slot.clone(),
        });
        extensions.insert(state.clone());
        let refused_headers = headers_too_large(request.headers());
        // Boxed: the rest of the middleware chain is a future of several KiB, and held
        // inline it made this one as large, copied whole each time poem's layers above
        // moved it (three copies of 8–11 KiB a request). Measured with callgrind: 146k →
        // 119k instructions per GET by id, 89k → 64k per `/health/live`. A future does
        // nothing until polled: the routes see the request only if `answer` lets it through.
        let inner = Box::pin(AssertUnwindSafe(self.inner.call(request)).catch_unwind());
        let started = Instant::now();

        // Everything below logs as the request's, the access-log line included.
        telemetry::in_request(request_id.clone(), async move {
            let asked = Asked {
                refused_headers,
                request_id: &request_id,
                path: &path,
                authenticated,
                ip,
                slot: &slot,
            };
            let mut response = self.answer(inner, asked).await;

            let method_not_allowed = response.status() == StatusCode::METHOD_NOT_ALLOWED;
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                headers.insert(REQUEST_ID, value);
            }
            if method_not_allowed
                && let Some(methods) = self.allow.allowed(&path)
                && let Ok(value) = HeaderValue::from_str(methods)
            {
                headers.insert(header::ALLOW, value);
            }
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
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

            let status = response.status();
            let operation = response
                .data::<OperationId>()
                .map_or_else(|| route_label(&path, status), |op| op.0);
            let elapsed = started.elapsed();
            state
                .metrics
                .observe(operation, status, elapsed.as_secs_f64());
            let latency_ms = elapsed.as_micros() as f64 / 1000.0;
            RequestLine {
                method: method.as_str(),
                path: &path,
                status: status.as_u16(),
                latency_ms,
                operation,
                request_id: &request_id,
            }
            .log();
            Ok(response)
        })
    }
}

impl<E: Endpoint> Edge<E> {
    /// The response to a request, errors and panics rendered as problems: refused at the edge
    /// (headers too large, rate limit), or from the routes under it (`inner`, the call made
    /// to them), within the time limit.
    async fn answer(
        &self,
        inner: impl Future<Output = std::thread::Result<poem::Result<E::Output>>>,
        asked: Asked<'_>,
    ) -> Response {
        let Asked {
            refused_headers,
            request_id,
            path,
            authenticated,
            ip,
            slot,
        } = asked;
        let state = &self.state;
        if refused_headers {
            let problem = Problem::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                format!("send at most {MAX_HEADERS} headers totalling {MAX_HEADER_BYTES} bytes"),
            );
            return problem_response(problem, request_id);
        }
        // Without credentials the caller is known only by address; with them, the security
        // scheme counts the request against the principal (or, if they are bad, the
        // address).
        if !authenticated
            && !exempt_from_limits(path)
            && let (Some(limiter), Some(ip)) = (&state.limiter, ip)
            && let Some(decision) = limiter.check(&Bucket::Ip(ip)).await
        {
            slot.set(decision);
            if !decision.allowed {
                let retry_after = decision.reset.max(1);
                return app_error_response(AppError::RateLimited { retry_after }, request_id);
            }
        }
        match tokio::time::timeout(state.policy.request_timeout, inner).await {
            Ok(Ok(Ok(output))) => {
                let response = output.into_response();
                match plain_error_problem(&response) {
                    Some(problem) => problem_response(problem, request_id),
                    None => response,
                }
            }
            Ok(Ok(Err(err))) => error_response(err, request_id),
            // The panic hook has printed the message; the client gets a plain 500.
            Ok(Err(_panic)) => {
                tracing::error!("request failed: a handler panicked");
                let problem = Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal-error",
                    INTERNAL_DETAIL,
                );
                problem_response(problem, request_id)
            }
            Err(_) => {
                tracing::error!(
                    timeout_secs = state.policy.request_timeout.as_secs(),
                    "request timed out"
                );
                app_error_response(
                    AppError::Unavailable(format!(
                        "the request did not complete within {} s",
                        state.policy.request_timeout.as_secs()
                    )),
                    request_id,
                )
            }
        }
    }
}

/// What the edge learnt of a request before handing it on.
struct Asked<'a> {
    refused_headers: bool,
    request_id: &'a str,
    path: &'a str,
    authenticated: bool,
    ip: Option<IpAddr>,
    slot: &'a RateLimitSlot,
}

/// Error responses the framework produced as plain responses (a caught panic, a CORS refusal)
/// get the problem shape too, so clients parse one error format.
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
            .find(|(pattern, _)| {
                pattern.len() == segments.len()
                    && pattern
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| p == s || (p.starts_with('{') && p.ends_with('}')))
            })
            .map(|(_, methods)| methods.as_str())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use poem::endpoint::make_sync;

    use super::*;
    use crate::{
        config::Cli,
        startup::{app_state, open_database},
    };

    /// The edge catches a panic itself (there is no `CatchPanic` layer without CORS): the
    /// caller gets a 500 problem that says nothing of the panic, and the next request is served.
    #[tokio::test]
    async fn a_panicking_handler_gets_a_problem_and_the_next_request_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("edge.db").display());
        let cli = Cli::parse_from(["users-api", "--database-url", &url]);
        let (db, ()) = open_database(&cli.db, async |_| Ok(())).await.unwrap();
        let state = app_state(&db, &cli.db, &cli.serve, None).await.unwrap();
        let inner = make_sync(|request: Request| {
            if request.uri().path() == "/boom" {
                panic!("secret internals");
            }
            "fine"
        });
        let edge = Edge::new(inner, state, AllowTable::new(&serde_json::json!({}), &[]));

        let request = Request::builder()
            .uri_str("/boom")
            .header(REQUEST_ID, "panic-1")
            .finish();
        let response = edge.call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[&REQUEST_ID], "panic-1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body: serde_json::Value =
            serde_json::from_str(&response.into_body().into_string().await.unwrap()).unwrap();
        assert_eq!(body["status"], 500);
        assert_eq!(body["request_id"], "panic-1");
        assert_eq!(body["detail"], INTERNAL_DETAIL);
        assert!(!body.to_string().contains("secret"), "{body}");

        let response = edge
            .call(Request::builder().uri_str("/ok").finish())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.into_body().into_string().await.unwrap(), "fine");
    }
}
