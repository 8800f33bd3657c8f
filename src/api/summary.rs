//! The JSON summary of `GET /api/v1/metrics`, built from the very exposition that
//! `GET /metrics` serves, so both always show the same numbers.

use std::collections::BTreeSet;

use poem_openapi::Object;

use crate::metrics::parse::{Exposition, HistogramData};
use crate::metrics::*;

/// What the server has done since it started, for people (scrapers read `/metrics`).
#[derive(Debug, Object)]
pub struct MetricsSummary {
    /// Inferno's version.
    pub version: String,
    /// llama.cpp's system info: the CPU features and backends its build uses.
    pub llama_cpp_system_info: String,
    /// Seconds since the metrics started (the first server of the process).
    pub uptime_secs: f64,
    pub http: MetricsHttp,
    pub jobs: MetricsJobs,
    /// Models loaded in the engine now.
    pub models_loaded: u64,
    /// Every model loaded since the start.
    pub models: Vec<MetricsModel>,
    pub auth: MetricsAuth,
    pub events: MetricsEvents,
    pub response_cache: MetricsCache,
    /// Present when `[nats]` is configured.
    #[oai(skip_serializing_if_is_none)]
    pub nats: Option<MetricsNats>,
}

/// A count under one label value.
#[derive(Debug, Object)]
pub struct MetricsCount {
    /// The label value (a status, a state, a permission, ...).
    pub name: String,
    pub count: u64,
}

/// A latency histogram in brief; the quantiles are estimates from its buckets.
#[derive(Debug, Object)]
pub struct MetricsLatency {
    pub count: u64,
    /// Absent while `count` is 0, like the quantiles.
    #[oai(nullable)]
    pub mean_secs: Option<f64>,
    #[oai(nullable)]
    pub p50_secs: Option<f64>,
    #[oai(nullable)]
    pub p95_secs: Option<f64>,
    #[oai(nullable)]
    pub p99_secs: Option<f64>,
}

#[derive(Debug, Object)]
pub struct MetricsHttp {
    /// Requests answered.
    pub requests: u64,
    /// Requests by status code.
    pub by_status: Vec<MetricsCount>,
    /// Per route template and method.
    pub routes: Vec<MetricsRoute>,
}

#[derive(Debug, Object)]
pub struct MetricsRoute {
    pub method: String,
    /// The route template, e.g. `/api/v1/jobs/{id}`; `unmatched` for unknown paths.
    pub route: String,
    pub requests: u64,
    /// Answered with a 4xx status.
    pub client_errors: u64,
    /// Answered with a 5xx status.
    pub server_errors: u64,
    pub duration: MetricsLatency,
}

#[derive(Debug, Object)]
pub struct MetricsJobs {
    /// Jobs by state, as the queue holds them now (finished ones until purged).
    pub by_state: Vec<MetricsCount>,
    /// Job runs by outcome since the start.
    pub runs: Vec<MetricsCount>,
    /// Seconds the oldest queued job has waited (0 when none is queued).
    pub oldest_queued_age_secs: f64,
    pub max_depth: u64,
    pub paused: bool,
    /// Time in the queue before a worker started the job.
    pub queue_wait: MetricsLatency,
}

#[derive(Debug, Object)]
pub struct MetricsModel {
    pub model: String,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    /// Sequence slots (0 once unloaded).
    pub slots: u64,
    pub busy_slots: u64,
    /// Requests waiting for a free slot.
    pub requests_waiting: u64,
    /// Share of the KV cells in use, 0 to 1.
    pub kv_cache_usage_ratio: f64,
    pub prefix_cache_hits: u64,
    pub decode_steps: u64,
    /// Sequences per decode step, on average.
    #[oai(nullable)]
    pub mean_batch_size: Option<f64>,
    /// From the job's enqueue to its first token.
    pub time_to_first_token: MetricsLatency,
    pub inter_token_latency: MetricsLatency,
    /// From the job's enqueue to its last token.
    pub e2e_request_latency: MetricsLatency,
}

#[derive(Debug, Object)]
pub struct MetricsAuthFailure {
    /// `password`, `jwt`, `api_key`, `none` (no credential) or `header` (unreadable).
    pub credential: String,
    /// E.g. `wrong_password`, `expired`, `revoked`, `unknown_key`, `missing`.
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Object)]
pub struct MetricsAuth {
    pub failures: Vec<MetricsAuthFailure>,
    /// 403s by the permission that was lacking.
    pub permission_denied: Vec<MetricsCount>,
    /// 429s by limit: `principal`, `failed_auth`, `login`, `queue_owner_cap`.
    pub rate_limited: Vec<MetricsCount>,
}

#[derive(Debug, Object)]
pub struct MetricsEvents {
    /// Events committed since the start.
    pub appended: u64,
    /// Seq of the newest event.
    pub head_seq: u64,
    /// The chain is known broken (start-up tail check or the last verification).
    pub chain_broken: bool,
    pub verifications_ok: u64,
    pub verifications_broken: u64,
    /// One group commit (sealing, projections, fsync).
    pub append_latency: MetricsLatency,
}

#[derive(Debug, Object)]
pub struct MetricsCache {
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses); absent before the first lookup.
    #[oai(nullable)]
    pub hit_rate: Option<f64>,
}

#[derive(Debug, Object)]
pub struct MetricsNats {
    pub connected: bool,
    pub tokens_published: u64,
    pub tokens_dropped: u64,
    /// Events not yet in JetStream; present with `[nats] events = true`.
    #[oai(nullable)]
    pub jetstream_lag: Option<u64>,
}

fn latency(h: Option<HistogramData>) -> MetricsLatency {
    let h = h.unwrap_or_default();
    MetricsLatency {
        count: h.count as u64,
        mean_secs: h.mean(),
        p50_secs: h.quantile(0.5),
        p95_secs: h.quantile(0.95),
        p99_secs: h.quantile(0.99),
    }
}

/// Counts of `name` per value of `label`, in label order.
fn counts(e: &Exposition, name: &str, label: &str) -> Vec<MetricsCount> {
    e.label_values(name, label)
        .into_iter()
        .map(|v| MetricsCount {
            count: e.sum(name, &[(label, v.as_str())]) as u64,
            name: v,
        })
        .collect()
}

fn routes(e: &Exposition) -> Vec<MetricsRoute> {
    let keys: BTreeSet<(String, String)> = e
        .series(HTTP_REQUESTS, &[])
        .filter_map(|s| {
            Some((
                s.label("route")?.to_string(),
                s.label("method")?.to_string(),
            ))
        })
        .collect();
    keys.into_iter()
        .map(|(route, method)| {
            let f = [("route", route.as_str()), ("method", method.as_str())];
            let by_class = |class: char| {
                e.series(HTTP_REQUESTS, &f)
                    .filter(|s| s.label("status").is_some_and(|st| st.starts_with(class)))
                    .map(|s| s.value)
                    .sum::<f64>() as u64
            };
            MetricsRoute {
                requests: e.sum(HTTP_REQUESTS, &f) as u64,
                client_errors: by_class('4'),
                server_errors: by_class('5'),
                duration: latency(e.histogram(HTTP_DURATION, &f)),
                method,
                route,
            }
        })
        .collect()
}

fn models(e: &Exposition) -> Vec<MetricsModel> {
    let mut names = e.label_values(SLOTS, "model");
    names.extend(e.label_values(&format!("{TTFT}_count"), "model"));
    names
        .into_iter()
        .map(|model| {
            let f = [("model", model.as_str())];
            let batch = e.histogram(BATCH_SIZE, &f).unwrap_or_default();
            MetricsModel {
                prompt_tokens: e.sum(PROMPT_TOKENS, &f) as u64,
                generation_tokens: e.sum(GENERATION_TOKENS, &f) as u64,
                slots: e.sum(SLOTS, &f) as u64,
                busy_slots: e.sum(BUSY_SLOTS, &f) as u64,
                requests_waiting: e.sum(REQUESTS_WAITING, &f) as u64,
                kv_cache_usage_ratio: e.sum(KV_CACHE_USAGE, &f),
                prefix_cache_hits: e.sum(PREFIX_CACHE_HITS, &f) as u64,
                decode_steps: batch.count as u64,
                mean_batch_size: batch.mean(),
                time_to_first_token: latency(e.histogram(TTFT, &f)),
                inter_token_latency: latency(e.histogram(ITL, &f)),
                e2e_request_latency: latency(e.histogram(E2E, &f)),
                model,
            }
        })
        .collect()
}

/// The summary of exposition `e`; `nats` when `[nats]` is configured.
pub fn summary(e: &Exposition, nats: bool) -> MetricsSummary {
    let info = e.series(BUILD_INFO, &[]).next();
    let label = |k: &str| {
        info.and_then(|s| s.label(k))
            .unwrap_or_default()
            .to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let started = e.value(START_TIME, &[]).unwrap_or(now);
    let hits = e.sum(RESPONSE_CACHE_HITS, &[]) as u64;
    let misses = e.sum(RESPONSE_CACHE_MISSES, &[]) as u64;
    let auth_failures = e
        .series(AUTH_FAILURES, &[])
        .map(|s| MetricsAuthFailure {
            credential: s.label("credential").unwrap_or_default().to_string(),
            reason: s.label("reason").unwrap_or_default().to_string(),
            count: s.value as u64,
        })
        .collect();
    MetricsSummary {
        version: label("version"),
        llama_cpp_system_info: label("llama_cpp_system_info"),
        uptime_secs: (now - started).max(0.0),
        http: MetricsHttp {
            requests: e.sum(HTTP_REQUESTS, &[]) as u64,
            by_status: counts(e, HTTP_REQUESTS, "status"),
            routes: routes(e),
        },
        jobs: MetricsJobs {
            by_state: counts(e, JOBS, "state"),
            runs: counts(e, JOB_RUNS, "outcome"),
            oldest_queued_age_secs: e.sum(QUEUE_OLDEST, &[]),
            max_depth: e.sum(QUEUE_MAX_DEPTH, &[]) as u64,
            paused: e.sum(QUEUE_PAUSED, &[]) > 0.0,
            queue_wait: latency(e.histogram(QUEUE_WAIT, &[])),
        },
        models_loaded: e.sum(MODELS_LOADED, &[]) as u64,
        models: models(e),
        auth: MetricsAuth {
            failures: auth_failures,
            permission_denied: counts(e, PERMISSION_DENIED, "permission"),
            rate_limited: counts(e, RATE_LIMITED, "limit"),
        },
        events: MetricsEvents {
            appended: e.sum(EVENTS_APPENDED, &[]) as u64,
            head_seq: e.sum(EVENT_LOG_HEAD, &[]) as u64,
            chain_broken: e.sum(CHAIN_BROKEN, &[]) > 0.0,
            verifications_ok: e.sum(CHAIN_VERIFICATIONS, &[("result", "ok")]) as u64,
            verifications_broken: e.sum(CHAIN_VERIFICATIONS, &[("result", "broken")]) as u64,
            append_latency: latency(e.histogram(EVENT_APPEND_DURATION, &[])),
        },
        response_cache: MetricsCache {
            hits,
            misses,
            hit_rate: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
        },
        nats: nats.then(|| MetricsNats {
            connected: e.sum(NATS_CONNECTED, &[]) > 0.0,
            tokens_published: e.sum(NATS_TOKENS_PUBLISHED, &[]) as u64,
            tokens_dropped: e.sum(NATS_TOKENS_DROPPED, &[]) as u64,
            jetstream_lag: e.value(JETSTREAM_LAG, &[]).map(|v| v as u64),
        }),
    }
}
