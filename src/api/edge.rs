//! What every request passes through on its way in and out: a request id, one log line, and
//! the rendering of every error, the framework's own included, as a problem.

use std::time::Instant;

use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, header},
};
use tracing::Instrument;
use uuid::Uuid;

use super::problem::{INTERNAL_DETAIL, PROBLEM_JSON, Problem};

pub const REQUEST_ID: &str = "x-request-id";

/// The id a request is known by, attached to the request for handlers that want it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A caller-supplied id is kept when it is short and plain enough to be safe in logs and
/// headers; anything else is replaced.
fn incoming_request_id(request: &Request) -> Option<String> {
    let value = request.headers().get(REQUEST_ID)?.to_str().ok()?;
    let sane = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    sane.then(|| value.to_owned())
}

pub async fn edge<E: Endpoint>(next: E, mut request: Request) -> poem::Result<Response> {
    let request_id = incoming_request_id(&request).unwrap_or_else(|| Uuid::new_v4().to_string());
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let span = tracing::info_span!("request", request_id = %request_id);

    let mut response = async {
        let problem = match next.call(request).await {
            Ok(output) => {
                let response = output.into_response();
                match plain_error_problem(&response) {
                    Some(problem) => problem,
                    None => return response,
                }
            }
            Err(err) => {
                let problem = Problem::from_error(&err);
                if problem.status >= 500 {
                    tracing::error!(error = %err, "request failed");
                }
                problem
            }
        };
        Problem {
            request_id: Some(request_id.clone()),
            ..problem
        }
        .into_response()
    }
    .instrument(span.clone())
    .await;

    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_micros() as f64 / 1000.0;
    span.in_scope(|| {
        tracing::info!(%method, %path, status, latency_ms, "request");
    });
    Ok(response)
}

/// Error responses the framework produced as plain responses (a caught panic, say) get the
/// problem shape too, so clients parse one error format.
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
