//! The HTTP API: poem-openapi resources (one file each), the error body, middleware and TLS.
//!
//! Layering, outermost first: error body ▸ request id + access log ▸ CORS ▸ error body ▸
//! body limit ▸ authentication + rate limit ▸ routes (each checks its permission). Only this module knows status codes.

mod audit;
mod auth;
mod cache;
mod config;
pub mod conn;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod guard;
mod health;
mod inference;
mod jobs;
mod keys;
mod metrics;
pub mod middleware;
mod models;
pub(crate) mod openai;
mod payload;
mod queue;
pub mod routes;
pub mod security;
mod spec;
mod stream;
mod summary;
pub mod tls;
mod transparency;
mod users;

use std::sync::Arc;

use arc_swap::ArcSwap;
use poem::endpoint::BoxEndpoint;
use poem::middleware::{Cors, CorsEndpoint};
use poem::Middleware;
use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::{OpenApiService, Tags};

use crate::config::Config;
use crate::server::AppState;
use error::error_response;
pub use metrics::public_app as public_metrics_app;
use middleware::BodyLimits;

/// The `limit` of a paged list route: 1 to 1000, default 100.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<usize, error::ApiError> {
    let limit = limit.map_or(crate::paging::DEFAULT_LIMIT, |l| l as usize);
    if (1..=crate::paging::MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(error::ApiError::field(
            "limit",
            format!("limit must be between 1 and {}", crate::paging::MAX_LIMIT),
        ))
    }
}

#[derive(Tags)]
pub enum ApiTags {
    /// Liveness and readiness.
    Health,
    /// Login, logout, identity.
    Auth,
    /// API keys.
    ApiKeys,
    /// User management.
    Users,
    /// The event log: query, tail, verify, export.
    Audit,
    /// GGUF models.
    Models,
    /// Inference.
    Inference,
    /// Inference jobs of the durable queue.
    Jobs,
    /// The queue manager's view and controls.
    Queue,
    /// OpenAI-compatible routes (`/v1`) for the official SDKs; errors in OpenAI's shape.
    OpenAi,
    /// Prometheus metrics and their JSON summary.
    Metrics,
    /// The effective configuration, and the settings that change live.
    Config,
    /// The prompt-prefix KV cache and the response cache.
    Cache,
}

/// Every resource of the API, in one tuple.
pub type Apis = (
    health::HealthApi,
    auth::AuthApi,
    keys::KeysApi,
    users::UsersApi,
    audit::AuditApi,
    transparency::TransparencyApi,
    models::ModelsApi,
    inference::InferenceApi,
    jobs::JobsApi,
    queue::QueueApi,
    openai::OpenAiApi,
    metrics::MetricsApi,
    config::ConfigApi,
    cache::CacheApi,
);

fn apis() -> Apis {
    (
        health::HealthApi,
        auth::AuthApi,
        keys::KeysApi,
        users::UsersApi,
        audit::AuditApi,
        transparency::TransparencyApi,
        models::ModelsApi,
        inference::InferenceApi,
        jobs::JobsApi,
        queue::QueueApi,
        openai::OpenAiApi,
        metrics::MetricsApi,
        config::ConfigApi,
        cache::CacheApi,
    )
}

/// The OpenAPI service; its spec, through [`spec_json`], is committed as
/// `openapi/openapi.json`.
pub fn api_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(apis(), "Inferno", env!("CARGO_PKG_VERSION"))
        .description(
            "Self-hosted LLM inference with a secured API and a tamper-evident event log. \
             Every error uses the body {\"error\": {\"code\", \"message\", \"details\"}}.",
        )
        .server("/")
}

/// The spec as pretty JSON (what `inferno openapi` prints and `/api/v1/openapi.json`
/// serves), with optional properties marked nullable (module `api::spec` says why).
pub fn spec_json() -> String {
    spec::with_nullable_optionals(&api_service().spec())
}

fn cors(cfg: &Config) -> Option<Cors> {
    let server = &cfg.server;
    if server.cors_origins.is_empty() {
        return None;
    }
    let cors = Cors::new()
        .allow_origins(server.cors_origins.iter().map(String::as_str))
        .allow_methods(server.cors_methods.iter().map(String::as_str))
        .allow_headers(server.cors_headers.iter().map(String::as_str))
        .expose_headers([
            "x-request-id",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "retry-after",
        ])
        .max_age(600);
    Some(cors)
}

/// The whole application endpoint.
pub fn app(state: AppState) -> impl Endpoint + 'static {
    let service = api_service();
    let spec_body = spec_json();
    let spec = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(spec_body.clone())
    });
    let docs = service.swagger_ui();
    // Body limits and CORS follow live changes of the configuration.
    let limits_state = state.clone();
    let routes = Route::new()
        .at("/api/v1/openapi.json", spec)
        .nest("/docs", docs)
        .nest("/", service)
        .around(security::authenticate)
        .around(move |ep, req| {
            let cfg = limits_state.config();
            let limits = BodyLimits {
                default: cfg.server.max_body_bytes,
                upload: cfg.models.max_upload_bytes,
                chunk_timeout: std::time::Duration::from_secs(cfg.server.body_timeout_secs),
            };
            middleware::limit_body(ep, req, limits)
        })
        .catch_all_error(|e| async move { error_response(e) })
        .boxed();
    LiveCors::new(routes, state.clone())
        .catch_all_error(|e| async move { error_response(e) })
        .around(openai::compat::compat)
        .around(middleware::observe)
        .data(state)
}

/// CORS from the configuration as it is now: rebuilt when a `PATCH /api/v1/config` changed
/// it (poem's [`Cors`] is fixed once built).
struct LiveCors {
    inner: Arc<BoxEndpoint<'static>>,
    state: AppState,
    /// The configuration generation it was built for, and the endpoint (none: no CORS).
    built: ArcSwap<(u64, Option<CorsEndpoint<Arc<BoxEndpoint<'static>>>>)>,
}

impl LiveCors {
    fn new(inner: BoxEndpoint<'static>, state: AppState) -> Self {
        let inner = Arc::new(inner);
        let generation = state.live_config().generation();
        let cors = cors(&state.config()).map(|c| c.transform(inner.clone()));
        Self {
            inner,
            state,
            built: ArcSwap::from_pointee((generation, cors)),
        }
    }
}

impl Endpoint for LiveCors {
    type Output = poem::Response;

    async fn call(&self, req: poem::Request) -> poem::Result<poem::Response> {
        let generation = self.state.live_config().generation();
        let mut built = self.built.load_full();
        if built.0 != generation {
            let cors = cors(&self.state.config()).map(|c| c.transform(self.inner.clone()));
            built = Arc::new((generation, cors));
            self.built.store(built.clone());
        }
        match &built.1 {
            Some(cors) => cors.call(req).await,
            None => self.inner.call(req).await,
        }
    }
}
