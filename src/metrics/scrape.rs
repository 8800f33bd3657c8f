//! Gauges that are read from the server's state at each scrape rather than kept up to date
//! on every change: jobs by state (the queue's projection), the queue's oldest job, loaded
//! models, NATS, the event log's head and chain.

use metrics::{counter, gauge};

use super::*;
use crate::server::AppState;

/// Sets every state-derived gauge from `state`. A part that cannot be read (the store is
/// unavailable) keeps its last value and is logged.
pub fn refresh(state: &AppState) {
    match state.queue().stats() {
        Ok(s) => {
            for (status, count) in &s.by_status {
                gauge!(JOBS, "state" => status.clone()).set(*count as f64);
            }
            let oldest = s.oldest_queued_age.map_or(0.0, |d| d.as_secs_f64());
            gauge!(QUEUE_OLDEST).set(oldest);
            gauge!(QUEUE_MAX_DEPTH).set(s.max_depth as f64);
            gauge!(QUEUE_PAUSED).set(if s.paused { 1.0 } else { 0.0 });
        }
        Err(e) => tracing::warn!(error = %e, "reading the queue for metrics"),
    }
    gauge!(MODELS_LOADED).set(state.engine().stats().loaded_models.len() as f64);

    let store = state.store();
    gauge!(EVENT_LOG_HEAD).set(store.head().0 as f64);
    let broken = store.is_read_only() || last_verify_broken();
    gauge!(CHAIN_BROKEN).set(if broken { 1.0 } else { 0.0 });

    if let Some(nats) = state.nats() {
        let s = nats.status();
        gauge!(NATS_CONNECTED).set(if s.connected { 1.0 } else { 0.0 });
        counter!(NATS_TOKENS_PUBLISHED).absolute(s.tokens_published);
        counter!(NATS_TOKENS_DROPPED).absolute(s.tokens_dropped);
        if let Some(js) = s.jetstream {
            gauge!(JETSTREAM_LAG).set(js.lag as f64);
        }
    }
}
