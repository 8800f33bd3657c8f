//! The handles one model thread records with. They are registered once, when the model is
//! loaded, so that a decode step only touches atomics.

use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use super::*;

/// One loaded model's families, all labelled `model = <id>`.
pub struct ModelMetrics {
    prompt_tokens: Counter,
    generation_tokens: Counter,
    inter_token: Histogram,
    batch_size: Histogram,
    batch_tokens: Histogram,
    busy_slots: Gauge,
    waiting: Gauge,
    kv_usage: Gauge,
    slots: Gauge,
    prefix_hits: Counter,
    prefix_reused_tokens: Counter,
}

impl ModelMetrics {
    /// Registers the model's families; `slots` is its sequence slot count.
    pub fn new(model: &str, slots: usize) -> Self {
        install();
        let m = || model.to_string();
        let metrics = Self {
            prompt_tokens: counter!(PROMPT_TOKENS, "model" => m()),
            generation_tokens: counter!(GENERATION_TOKENS, "model" => m()),
            inter_token: histogram!(ITL, "model" => m()),
            batch_size: histogram!(BATCH_SIZE, "model" => m()),
            batch_tokens: histogram!(BATCH_TOKENS, "model" => m()),
            busy_slots: gauge!(BUSY_SLOTS, "model" => m()),
            waiting: gauge!(REQUESTS_WAITING, "model" => m()),
            kv_usage: gauge!(KV_CACHE_USAGE, "model" => m()),
            slots: gauge!(SLOTS, "model" => m()),
            prefix_hits: counter!(PREFIX_CACHE_HITS, "model" => m()),
            prefix_reused_tokens: counter!(PREFIX_CACHE_REUSED_TOKENS, "model" => m()),
        };
        metrics.prefix_hits.increment(0);
        metrics.prefix_reused_tokens.increment(0);
        metrics.prompt_tokens.increment(0);
        metrics.generation_tokens.increment(0);
        metrics.slots.set(slots as f64);
        metrics
    }

    /// A request got a slot with a prompt of `tokens` tokens.
    pub fn admitted(&self, tokens: usize) {
        self.prompt_tokens.increment(tokens as u64);
    }

    /// A request got a slot whose KV cache already held the first `reused` tokens of its
    /// prompt (0: a miss).
    pub fn prefix_reused(&self, reused: usize) {
        if reused > 0 {
            self.prefix_hits.increment(1);
            self.prefix_reused_tokens.increment(reused as u64);
        }
    }

    /// A token was generated; `since_previous` is the time since the sequence's previous
    /// generated token (`None` for its first).
    pub fn generated(&self, since_previous: Option<Duration>) {
        self.generation_tokens.increment(1);
        if let Some(d) = since_previous {
            self.inter_token.record(d.as_secs_f64());
        }
    }

    /// One decode step over `sequences` sequences and `tokens` tokens.
    pub fn decoded(&self, sequences: usize, tokens: usize) {
        self.batch_size.record(sequences as f64);
        self.batch_tokens.record(tokens as f64);
    }

    /// The model's slots now: `busy` of them hold a sequence, `waiting` requests wait for
    /// one, and `kv_used` of `kv_capacity` KV cells are in use.
    pub fn occupancy(&self, busy: usize, waiting: usize, kv_used: usize, kv_capacity: usize) {
        self.busy_slots.set(busy as f64);
        self.waiting.set(waiting as f64);
        let ratio = if kv_capacity == 0 {
            0.0
        } else {
            kv_used as f64 / kv_capacity as f64
        };
        self.kv_usage.set(ratio);
    }

    /// The model was unloaded: nothing is busy, waiting or cached any more.
    pub fn unloaded(&self) {
        self.occupancy(0, 0, 0, 0);
        self.slots.set(0.0);
    }
}
