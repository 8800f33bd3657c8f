//! Prometheus metrics: every family's name, help text and buckets, the process-wide
//! recorder, and the helpers the rest of the server records with.
//!
//! # Layout
//!
//! - `mod.rs` (this file): the family names (all `inferno_`), their help and histogram
//!   buckets, [`install`] (once per process) and [`render`].
//! - `record`: the recording helpers called from the API layer, the auth service, the queue
//!   and the event log's caller ([`events_appended`]); each takes only bounded label values.
//! - `engine`: [`ModelMetrics`], the handles a model thread records with on every decode step
//!   (tokens, inter-token latency, batch size, busy slots, KV-cache usage).
//! - `scrape`: the gauges read from the server's state at each scrape (jobs by state, loaded
//!   models, NATS, the event log's head and chain).
//! - `parse`: reads an exposition back into samples, for the JSON summary of
//!   `GET /api/v1/metrics`.
//!
//! The names follow what users of llama.cpp's server (`llamacpp:*`) and vLLM (`vllm:*`)
//! already graph: `inferno_prompt_tokens_total`, `inferno_generation_tokens_total`,
//! `inferno_time_to_first_token_seconds`, `inferno_inter_token_latency_seconds`,
//! `inferno_e2e_request_latency_seconds`, `inferno_kv_cache_usage_ratio`, ...
//!
//! The recorder is global (the `metrics` facade allows one per process): several servers in
//! one process (the integration tests) share it, and [`install`] is idempotent. Histograms
//! always have explicit buckets; nothing is rendered as a summary.
//!
//! Label values are bounded: route templates (never raw paths), model ids, job states,
//! permission names and fixed failure kinds. No credential, user name or e-mail address is
//! ever a label value.

mod engine;
pub mod parse;
mod record;
mod scrape;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use engine::ModelMetrics;
pub use record::*;
pub use scrape::refresh;

// HTTP
pub const HTTP_REQUESTS: &str = "inferno_http_requests_total";
pub const HTTP_DURATION: &str = "inferno_http_request_duration_seconds";
// Jobs and the queue
pub const JOBS: &str = "inferno_jobs";
pub const JOB_RUNS: &str = "inferno_job_runs_total";
pub const QUEUE_WAIT: &str = "inferno_job_queue_wait_seconds";
pub const QUEUE_OLDEST: &str = "inferno_queue_oldest_job_age_seconds";
pub const QUEUE_MAX_DEPTH: &str = "inferno_queue_max_depth";
pub const QUEUE_PAUSED: &str = "inferno_queue_paused";
// Inference
pub const TTFT: &str = "inferno_time_to_first_token_seconds";
pub const ITL: &str = "inferno_inter_token_latency_seconds";
pub const E2E: &str = "inferno_e2e_request_latency_seconds";
pub const PROMPT_TOKENS: &str = "inferno_prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "inferno_generation_tokens_total";
pub const BATCH_SIZE: &str = "inferno_decode_batch_size";
pub const BATCH_TOKENS: &str = "inferno_decode_batch_tokens";
pub const SLOTS: &str = "inferno_slots";
pub const BUSY_SLOTS: &str = "inferno_busy_slots";
pub const REQUESTS_WAITING: &str = "inferno_requests_waiting";
pub const KV_CACHE_USAGE: &str = "inferno_kv_cache_usage_ratio";
pub const PREFIX_CACHE_HITS: &str = "inferno_prefix_cache_hits_total";
pub const PREFIX_CACHE_REUSED_TOKENS: &str = "inferno_prefix_cache_reused_tokens_total";
pub const MODELS_LOADED: &str = "inferno_models_loaded";
// The event log
pub const EVENTS_APPENDED: &str = "inferno_events_appended_total";
pub const EVENT_APPEND_DURATION: &str = "inferno_event_append_duration_seconds";
pub const EVENT_LOG_HEAD: &str = "inferno_event_log_head_seq";
pub const CHAIN_BROKEN: &str = "inferno_event_chain_broken";
pub const CHAIN_VERIFICATIONS: &str = "inferno_event_chain_verifications_total";
// Security
pub const RATE_LIMITED: &str = "inferno_rate_limited_requests_total";
pub const AUTH_FAILURES: &str = "inferno_auth_failures_total";
pub const PERMISSION_DENIED: &str = "inferno_permission_denied_total";
// The response cache
pub const RESPONSE_CACHE_HITS: &str = "inferno_response_cache_hits_total";
pub const RESPONSE_CACHE_MISSES: &str = "inferno_response_cache_misses_total";
// NATS
pub const NATS_CONNECTED: &str = "inferno_nats_connected";
pub const NATS_TOKENS_PUBLISHED: &str = "inferno_nats_tokens_published_total";
pub const NATS_TOKENS_DROPPED: &str = "inferno_nats_tokens_dropped_total";
pub const JETSTREAM_LAG: &str = "inferno_jetstream_publish_lag_events";
// The build
pub const BUILD_INFO: &str = "inferno_build_info";
pub const START_TIME: &str = "inferno_start_time_seconds";

/// Seconds: HTTP handling (a stream counts until its head is sent).
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Seconds: vLLM's time-to-first-token buckets, finer at the low end for small CPU models.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
/// Seconds between two generated tokens of one sequence.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    5.0,
];
/// Seconds from a job's enqueue to its last token (vLLM's buckets, plus the short end).
const E2E_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0,
];
/// Seconds a job waited in the queue.
const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Sequences decoded together in one step.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Tokens in one decode step (prompt chunks and one per generating sequence).
const BATCH_TOKEN_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];
/// Seconds: one group commit of the event log (fsync included).
const APPEND_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// How often the recorder's histogram buffers are drained when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

fn builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let full = |name: &str| Matcher::Full(name.to_string());
    PrometheusBuilder::new()
        // Any histogram not listed below still gets buckets, never a summary.
        .set_buckets(HTTP_BUCKETS)?
        .set_buckets_for_metric(full(HTTP_DURATION), HTTP_BUCKETS)?
        .set_buckets_for_metric(full(TTFT), TTFT_BUCKETS)?
        .set_buckets_for_metric(full(ITL), ITL_BUCKETS)?
        .set_buckets_for_metric(full(E2E), E2E_BUCKETS)?
        .set_buckets_for_metric(full(QUEUE_WAIT), QUEUE_WAIT_BUCKETS)?
        .set_buckets_for_metric(full(BATCH_SIZE), BATCH_SIZE_BUCKETS)?
        .set_buckets_for_metric(full(BATCH_TOKENS), BATCH_TOKEN_BUCKETS)?
        .set_buckets_for_metric(full(EVENT_APPEND_DURATION), APPEND_BUCKETS)
}

/// Installs the recorder process-wide the first time it is called (later calls return the
/// same handle), describes every family, sets the build info, and starts the upkeep thread.
/// `None` when another recorder was installed first: metrics are then not served.
pub fn install() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = match builder() {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::error!(error = %e, "building the metrics recorder");
                    return None;
                }
            };
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::error!(error = %e, "another metrics recorder is installed; /metrics stays empty");
                return None;
            }
            describe();
            record::started();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "starting the metrics upkeep thread");
            }
            Some(handle)
        })
        .as_ref()
}

/// The current exposition (Prometheus text format 0.0.4), or `None` without a recorder.
/// Call [`refresh`] first so the state-derived gauges are current.
pub fn render() -> Option<String> {
    install().map(PrometheusHandle::render)
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by method, route template and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        "Seconds from receiving a request to its response head (for an SSE stream, until the stream starts)."
    );
    describe_gauge!(
        JOBS,
        "Jobs in the queue's projection by state (finished ones until purged)."
    );
    describe_counter!(
        JOB_RUNS,
        "Job runs by outcome: completed, failed, cancelled, dead, retried, handed_back."
    );
    describe_histogram!(
        QUEUE_WAIT,
        "Seconds a job waited in the queue before a worker started it, by model."
    );
    describe_gauge!(
        QUEUE_OLDEST,
        "Seconds the oldest queued job has waited (0 when none is queued)."
    );
    describe_gauge!(
        QUEUE_MAX_DEPTH,
        "[queue] max_depth: queued plus running jobs beyond it are refused with 503."
    );
    describe_gauge!(QUEUE_PAUSED, "1 while the queue is paused.");
    describe_histogram!(
        TTFT,
        "Seconds from a job's enqueue to its first generated token, by model."
    );
    describe_histogram!(
        ITL,
        "Seconds between two consecutive generated tokens of one sequence, by model."
    );
    describe_histogram!(
        E2E,
        "Seconds from a job's enqueue to its last token, by model (completed jobs)."
    );
    describe_counter!(
        PROMPT_TOKENS,
        "Prompt tokens of requests that got a slot, by model."
    );
    describe_counter!(
        GENERATION_TOKENS,
        "Generated tokens (end-of-generation tokens excluded), by model."
    );
    describe_histogram!(
        BATCH_SIZE,
        "Sequences decoded together in one decode step, by model."
    );
    describe_histogram!(
        BATCH_TOKENS,
        "Tokens in one decode step (prompt chunks plus one per generating sequence), by model."
    );
    describe_gauge!(
        SLOTS,
        "Sequence slots of a loaded model ([models] parallel)."
    );
    describe_gauge!(BUSY_SLOTS, "Slots holding a sequence now, by model.");
    describe_gauge!(
        REQUESTS_WAITING,
        "Requests waiting for a free slot in the engine, by model."
    );
    describe_gauge!(
        KV_CACHE_USAGE,
        "Share of the model context's KV cells in use (0 to 1), by model."
    );
    describe_counter!(
        PREFIX_CACHE_HITS,
        "Requests that reused a prompt prefix from a slot's KV cache, by model."
    );
    describe_counter!(
        PREFIX_CACHE_REUSED_TOKENS,
        "Prompt tokens taken from a slot's KV cache instead of prefilled, by model."
    );
    describe_gauge!(MODELS_LOADED, "Models loaded in the engine.");
    describe_counter!(EVENTS_APPENDED, "Events committed to the event log.");
    describe_histogram!(
        EVENT_APPEND_DURATION,
        "Seconds one group commit of the event log took (sealing, projections, fsync)."
    );
    describe_gauge!(EVENT_LOG_HEAD, "Seq of the newest event in the log.");
    describe_gauge!(
        CHAIN_BROKEN,
        "1 when the event chain is known broken (start-up tail check or the last verification)."
    );
    describe_counter!(
        CHAIN_VERIFICATIONS,
        "Whole-chain verifications of the event log by result (ok, broken)."
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused with 429 by limit: principal, failed_auth, login, queue_owner_cap."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Failed authentications by credential (password, jwt, api_key, none, header) and reason."
    );
    describe_counter!(
        PERMISSION_DENIED,
        "Authenticated requests refused with 403, by the permission they lacked."
    );
    describe_counter!(
        RESPONSE_CACHE_HITS,
        "Requests answered from the response cache."
    );
    describe_counter!(
        RESPONSE_CACHE_MISSES,
        "Cacheable requests the response cache could not answer."
    );
    describe_gauge!(
        NATS_CONNECTED,
        "1 while connected to NATS (present only with [nats])."
    );
    describe_counter!(
        NATS_TOKENS_PUBLISHED,
        "Token pieces published to inferno.jobs.<id>.tokens."
    );
    describe_counter!(
        NATS_TOKENS_DROPPED,
        "Token pieces not published (NATS down or the buffer full)."
    );
    describe_gauge!(
        JETSTREAM_LAG,
        "Committed events not yet acknowledged by the JetStream stream (with [nats] events)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels name the version and llama.cpp's system info."
    );
    describe_gauge!(START_TIME, "Unix time in seconds when metrics started.");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_recorder_installs_once_and_renders_described_families() {
        let first = super::install().expect("recorder") as *const _;
        let second = super::install().expect("recorder") as *const _;
        assert_eq!(first, second);
        super::rate_limited(super::RateLimit::Principal);
        let text = super::render().unwrap();
        assert!(text.contains("# TYPE inferno_build_info gauge"), "{text}");
        assert!(
            text.contains("inferno_rate_limited_requests_total{limit=\"principal\"}"),
            "{text}"
        );
    }
}
