//! For operators and machines: liveness, readiness and metrics. Public, never rate-limited.

use std::sync::Arc;

use poem::{Request, http::header, web::Data};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    payload::{Json, PlainText},
};
use sha2::{Digest, Sha256};

use super::{
    ApiTags, State,
    problem::{ApiResult, LiveErrors, MetricsErrors, ReadyErrors},
};
use crate::error::AppError;

/// A health verdict.
#[derive(Debug, Clone, Object)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

fn ok() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[derive(ApiResponse)]
pub enum LiveResponse {
    /// The process is up and serving.
    #[oai(status = 200)]
    Ok(Json<Health>),
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The process can serve requests: its database answers.
    #[oai(status = 200)]
    Ok(Json<Health>),
}

#[derive(ApiResponse)]
pub enum RootResponse {
    /// The docs live at `/docs`.
    #[oai(status = 303)]
    SeeDocs(#[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum MetricsResponse {
    /// Metrics in the Prometheus text exposition format.
    #[oai(status = 200)]
    Ok(PlainText<String>),
}

pub struct OperationsApi;

#[OpenApi(tag = "ApiTags::HealthAndMetrics")]
impl OperationsApi {
    /// `/` sends people to the docs.
    #[oai(path = "/", method = "get", hidden)]
    async fn root(&self) -> RootResponse {
        RootResponse::SeeDocs("/docs".into())
    }

    /// Liveness
    ///
    /// 200 whenever the process serves HTTP; restart it if this fails.
    #[oai(path = "/health/live", method = "get", operation_id = "getLiveness")]
    async fn live(&self) -> ApiResult<LiveResponse, LiveErrors> {
        Ok(LiveResponse::Ok(ok()))
    }

    /// Readiness
    ///
    /// 200 when the database answers, else 503: take the instance out of the load balancer.
    #[oai(path = "/health/ready", method = "get", operation_id = "getReadiness")]
    async fn ready(&self, state: Data<&Arc<State>>) -> ApiResult<ReadyResponse, ReadyErrors> {
        state.service.ready().await?;
        Ok(ReadyResponse::Ok(ok()))
    }

    /// Metrics
    ///
    /// Requests by operation and status, latency histograms, database pool use, read-cache
    /// lookups and rate-limit refusals, for Prometheus. When the server has a
    /// `--metrics-token`, send it as `Authorization: Bearer <token>`.
    #[oai(path = "/metrics", method = "get", operation_id = "getMetrics")]
    async fn metrics(
        &self,
        state: Data<&Arc<State>>,
        request: &Request,
    ) -> ApiResult<MetricsResponse, MetricsErrors> {
        if let Some(expected) = &state.settings.metrics_token {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or(AppError::MissingCredentials)?;
            // Comparing digests keeps the comparison's timing independent of the token.
            if Sha256::digest(presented.as_bytes()) != Sha256::digest(expected.as_bytes()) {
                return Err(AppError::InvalidToken("the metrics token is wrong".into()).into());
            }
        }
        Ok(MetricsResponse::Ok(PlainText(state.render_metrics())))
    }
}
