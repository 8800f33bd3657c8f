//! `GET /metrics` (Prometheus text format, for scrapers) and `GET /api/v1/metrics` (the
//! same numbers as JSON, for people). Both need `read_metrics`; `[metrics] public_bind`
//! serves `/metrics` without authentication on a separate listener ([`public_app`]).

use poem::web::Data;
use poem::{handler, EndpointExt, IntoResponse, Route};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, OpenApi};

use super::error::ApiError;
use super::security::Auth;
use super::summary::{summary, MetricsSummary};
use super::ApiTags;
use crate::auth::perm;
use crate::metrics::parse::Exposition;
use crate::server::AppState;

/// The exposition, state-derived gauges refreshed first.
fn scrape(state: &AppState) -> Result<String, ApiError> {
    crate::metrics::refresh(state);
    crate::metrics::render()
        .ok_or_else(|| ApiError::unavailable("the metrics recorder is not installed", 60))
}

#[derive(ApiResponse)]
pub enum PrometheusText {
    /// The Prometheus text exposition format, version 0.0.4.
    #[oai(
        status = 200,
        content_type = "text/plain; version=0.0.4; charset=utf-8"
    )]
    Ok(PlainText<String>),
}

pub struct MetricsApi;

#[OpenApi(tag = "ApiTags::Metrics")]
impl MetricsApi {
    /// Every metric family in the Prometheus text format (version 0.0.4), for scrapers; the
    /// README's "Metrics" lists them. Requires permission `read_metrics`.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics_prometheus")]
    async fn prometheus(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ReadMetrics>,
    ) -> Result<PrometheusText, ApiError> {
        Ok(PrometheusText::Ok(PlainText(scrape(&state)?)))
    }

    /// The numbers of `GET /metrics` summarised for people: totals, per-route and
    /// per-model figures, and latency means and quantiles (estimated from the histogram
    /// buckets as PromQL's `histogram_quantile` does). Requires permission `read_metrics`.
    #[oai(
        path = "/api/v1/metrics",
        method = "get",
        operation_id = "metrics_summary"
    )]
    async fn summary(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ReadMetrics>,
    ) -> Result<Json<MetricsSummary>, ApiError> {
        let text = scrape(&state)?;
        let nats = state.nats().is_some();
        Ok(Json(summary(&Exposition::parse(&text), nats)))
    }
}

#[handler]
fn public_metrics(state: Data<&AppState>) -> poem::Response {
    match scrape(&state) {
        Ok(text) => poem::Response::builder()
            .content_type(crate::metrics::CONTENT_TYPE)
            .body(text),
        Err(e) => e.into_response(),
    }
}

/// The unauthenticated listener of `[metrics] public_bind`: `GET /metrics` only, every
/// other path the usual 404 error body.
pub fn public_app(state: AppState) -> impl poem::Endpoint + 'static {
    Route::new()
        .at("/metrics", poem::get(public_metrics))
        .catch_all_error(|e| async move { super::error::error_response(e) })
        .data(state)
}
