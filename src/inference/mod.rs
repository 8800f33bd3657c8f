//! Inference: the [`Engine`] trait, the llama.cpp engine, GGUF model files and sampling params.
//!
//! # Layout
//!
//! - `mod.rs` (this file): public request, event and error types and the [`Engine`] trait.
//! - `models`: [`LlamaEngine`], the caller's side: one handle (channel + counters) per loaded
//!   model, lazy loading, least-recently-used eviction, stats.
//! - `llama`: the model threads, the only file using llama-cpp-2 (FFI). One dedicated OS
//!   thread per loaded model runs a continuous-batching loop over one llama.cpp context;
//!   callers talk to it through channels and never block a tokio runtime thread.
//! - `text`: pure helpers the engine threads use on generated text (UTF-8 reassembly across
//!   tokens, stop-string matching with hold-back).
//! - `chat`: pure helpers that keep chat message content apart from the template text, so
//!   only the template's own markers become control tokens.
//! - [`gguf`]: pure-Rust reader of a GGUF file's header and metadata.
//! - [`registry`]: the model files on disk (`*.gguf`), with a cached sha256 per file.
//! - [`catalog`]: the model catalog: files joined with the `models` projection; upload,
//!   update and delete as events.
//! - [`runner`]: one inference request end to end, with its events.

pub mod catalog;
mod chat;
pub mod gguf;
mod llama;
mod models;
pub mod registry;
pub mod runner;
mod text;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::events::{decimal_text, ContentRecord, SamplingRecord, TimingsRecord};

pub use gguf::{is_gguf, read_metadata, GgufMetadata};
pub use models::LlamaEngine;
pub use registry::{inspect_with_digest, remember_digest, scan_dir, ModelFile};

/// llama.cpp's one-line summary of the CPU features and backends its build uses (for the
/// logs and the `inferno_build_info` metric).
pub fn system_info() -> String {
    llama::system_info()
}

/// Everything that can go wrong in the inference layer. Each variant says how the API layer
/// is expected to report it to a client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The prompt does not fit in one slot's context. → 400 `VALIDATION_ERROR`.
    #[error("prompt is {prompt_tokens} tokens, the limit is {max_prompt_tokens}")]
    ContextOverflow {
        prompt_tokens: u32,
        max_prompt_tokens: u32,
    },
    /// No such model (unknown id, or its file is gone). → 404 `NOT_FOUND`.
    #[error("model not found: {0}")]
    ModelNotFound(String),
    /// The file exists but is not a readable GGUF model (bad magic, truncated header,
    /// unsupported version). → 400 `VALIDATION_ERROR` when the file came from the client,
    /// 500 otherwise.
    #[error("invalid model file: {0}")]
    InvalidModel(String),
    /// llama.cpp failed to load the model or create its context. → 500 `INTERNAL_ERROR`.
    #[error("failed to load model: {0}")]
    Load(String),
    /// Anything else that is our fault (decode failure, engine thread gone, I/O). → 500.
    #[error("internal engine error: {0}")]
    Internal(String),
    /// Loading another model would exceed `max_loaded` and every loaded model is busy.
    /// → 503 `SERVICE_UNAVAILABLE` with `Retry-After`.
    #[error("engine overloaded: all loaded models are busy")]
    Overloaded,
    /// Sampling parameters or prompt rejected before any work. → 400 `VALIDATION_ERROR`.
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    /// The model's waiting list is full, or the request waited too long for a slot.
    /// → 503 `SERVICE_UNAVAILABLE` with `Retry-After`.
    #[error("model busy: {0}")]
    Busy(BusyReason),
}

/// Why a model turned a request away ([`EngineError::Busy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusyReason {
    /// `max_waiting` requests already wait for a slot: refused at submit.
    #[error("{max_waiting} requests are already waiting for a free slot")]
    WaitingListFull { max_waiting: usize },
    /// No slot became free within `max_wait`: the request left the waiting list.
    #[error("no slot became free within {max_wait_secs} s")]
    WaitedTooLong { max_wait_secs: u64 },
}

/// Most stop strings one request may give, and their longest length in characters: the
/// engine checks every stop string at every token.
pub const MAX_STOP_STRINGS: usize = 8;
pub const MAX_STOP_CHARS: usize = 64;

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Upper bound on generated tokens; clamped to what still fits in the slot's context.
    pub max_tokens: u32,
    /// 0 = greedy (deterministic); otherwise softmax temperature.
    pub temperature: f32,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    /// 1.0 = off. Applied over the last 64 tokens (prompt included).
    pub repeat_penalty: Option<f32>,
    /// Seed for the random sampler; `None` = a fresh random seed per request.
    pub seed: Option<u32>,
    /// Generation ends when the output contains one of these; the stop string is not returned.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repeat_penalty: None,
            seed: None,
            stop: Vec::new(),
        }
    }
}

/// The highest temperature accepted (OpenAI's bound; beyond it sampling is noise).
pub const MAX_TEMPERATURE: f32 = 2.0;

impl SamplingParams {
    /// Rejects values llama.cpp would misbehave on. Called by [`Engine::submit`].
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: &str| Err(EngineError::InvalidParams(m.to_owned()));
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1");
        }
        if !(0.0..=MAX_TEMPERATURE).contains(&self.temperature) {
            return bad(&format!("temperature must be in [0, {MAX_TEMPERATURE}]"));
        }
        if matches!(self.top_k, Some(k) if k < 1) {
            return bad("top_k must be >= 1");
        }
        if matches!(self.top_p, Some(p) if !(p > 0.0 && p <= 1.0)) {
            return bad("top_p must be in (0, 1]");
        }
        if matches!(self.min_p, Some(p) if !(0.0..=1.0).contains(&p)) {
            return bad("min_p must be in [0, 1]");
        }
        if matches!(self.repeat_penalty, Some(p) if !(p.is_finite() && p > 0.0)) {
            return bad("repeat_penalty must be a finite number > 0");
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty");
        }
        if self.stop.len() > MAX_STOP_STRINGS
            || self.stop.iter().any(|s| s.chars().count() > MAX_STOP_CHARS)
        {
            return bad(&format!(
                "stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} characters each"
            ));
        }
        Ok(())
    }

    /// The field an error of [`SamplingParams::validate`] is about: every message starts
    /// with its name.
    pub fn invalid_field(message: &str) -> &'static str {
        const FIELDS: [&str; 7] = [
            "max_tokens",
            "temperature",
            "top_k",
            "top_p",
            "min_p",
            "repeat_penalty",
            "stop",
        ];
        let first = message.split(' ').next().unwrap_or_default();
        FIELDS.into_iter().find(|f| *f == first).unwrap_or("params")
    }
}

impl SamplingParams {
    /// The parameters as events record them (no floats; stop strings as digests, with
    /// their text when `record_content`).
    pub fn record(&self, record_content: bool) -> SamplingRecord {
        let decimal = |v: Option<f32>| v.map(decimal_text);
        SamplingRecord {
            max_tokens: self.max_tokens,
            temperature: decimal_text(self.temperature),
            top_k: self.top_k,
            top_p: decimal(self.top_p),
            min_p: decimal(self.min_p),
            repeat_penalty: decimal(self.repeat_penalty),
            seed: self.seed,
            stop: self
                .stop
                .iter()
                .map(|s| ContentRecord::new(s, record_content))
                .collect(),
        }
    }
}

impl Timings {
    /// The timings as events record them: whole microseconds, rate in thousandths.
    pub fn record(&self) -> TimingsRecord {
        let micros = |ms: f64| (ms * 1000.0).max(0.0).round() as u64;
        TimingsRecord {
            queue_us: micros(self.queue_ms),
            prompt_us: micros(self.prompt_ms),
            generate_us: micros(self.generate_ms),
            tokens_per_second_milli: micros(self.tokens_per_second),
            cached_tokens: u64::from(self.cached_tokens),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text, tokenized as-is (BOS added; special-token text is NOT parsed as control
    /// tokens, so a client cannot forge turn markers).
    Text(String),
    /// Rendered with the model's chat template, ending with the assistant's turn opener.
    /// Only the template's own markers become control tokens: message content is plain text,
    /// like [`Prompt::Text`].
    Chat(Vec<ChatMessage>),
}

/// Which model to run: `id` is the registry id (file stem), `path` the GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub id: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` (or the slot's context) reached.
    Length,
    /// Cancelled by the caller, by dropping the [`Generation`], or by [`Engine::unload`].
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Time spent waiting for a free slot (FIFO queue).
    pub queue_ms: f64,
    /// From getting a slot to the first generated token (prompt processing).
    /// Time to first token = `queue_ms + prompt_ms`.
    pub prompt_ms: f64,
    /// From the first generated token to the end.
    pub generate_ms: f64,
    /// Decode rate seen by this sequence: tokens after the first over `generate_ms`
    /// (0 when fewer than 2 tokens).
    pub tokens_per_second: f64,
    /// Prompt tokens taken from the slot's KV cache (prompt-prefix cache) instead of
    /// prefilled.
    #[serde(default)]
    pub cached_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub timings: Timings,
    /// Answered from the response cache, without running the model.
    #[serde(default)]
    pub cached: bool,
}

/// What a [`Generation`] yields, in order: `Started`, zero or more `Token`, then exactly one
/// `Done` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// The request got a slot and its prompt was tokenized.
    Started {
        prompt_tokens: u32,
    },
    /// A piece of output text: always valid UTF-8, never part of a stop string.
    Token(String),
    Done(Completion),
    Error(EngineError),
}

/// Cancels a [`Generation`] from elsewhere (e.g. a client-disconnect watcher).
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A running generation. Dropping it (or calling cancel) cancels: generation stops at the
/// next token and the slot is freed.
#[derive(Debug)]
pub struct Generation {
    events: mpsc::UnboundedReceiver<GenEvent>,
    cancel: CancelHandle,
}

impl Generation {
    /// The engine side: where events are sent, and the flag it polls.
    pub(crate) fn channel() -> (Generation, mpsc::UnboundedSender<GenEvent>, CancelHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancelHandle::default();
        let generation = Generation {
            events: rx,
            cancel: cancel.clone(),
        };
        (generation, tx, cancel)
    }

    /// The next event; `None` after the final `Done`/`Error`.
    pub async fn next(&mut self) -> Option<GenEvent> {
        self.events.recv().await
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Waits for the end and returns the whole text with its [`Completion`].
    pub async fn collect(mut self) -> Result<(String, Completion), EngineError> {
        let mut text = String::new();
        while let Some(event) = self.next().await {
            match event {
                GenEvent::Started { .. } => {}
                GenEvent::Token(piece) => text.push_str(&piece),
                GenEvent::Done(completion) => return Ok((text, completion)),
                GenEvent::Error(e) => return Err(e),
            }
        }
        Err(EngineError::Internal(
            "engine stopped before the generation finished".into(),
        ))
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences decoded together per model (slots).
    pub parallel: usize,
    /// CPU threads per model context.
    pub threads: usize,
    /// Context tokens per slot (prompt + completion).
    pub ctx_per_slot: u32,
    /// Most prompt tokens processed in one decode step.
    pub batch_size: u32,
    /// Models kept loaded at once.
    pub max_loaded: usize,
    /// Requests per model that may wait for a free slot; one more fails at once with
    /// [`BusyReason::WaitingListFull`]. Bounds the memory and the latency a burst can cause.
    pub max_waiting: usize,
    /// Longest a request waits for a slot before it fails with [`BusyReason::WaitedTooLong`].
    pub max_wait: Duration,
    /// Slots keep a finished sequence's KV cells for the next prompt with the same prefix.
    pub prompt_cache: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            parallel: 4,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ctx_per_slot: 2048,
            batch_size: 512,
            max_loaded: 2,
            max_waiting: 64,
            max_wait: Duration::from_secs(300),
            prompt_cache: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    pub loaded_models: Vec<String>,
    /// Sequences holding a slot right now, over all models.
    pub active_sequences: usize,
    pub decode_steps: u64,
    /// Largest number of sequences decoded together in one step.
    pub max_batch_sequences: usize,
    /// Sampled tokens, end-of-generation tokens excluded.
    pub tokens_generated: u64,
    /// Requests that ended with `Done`, whatever the finish reason (errors not counted).
    pub requests_completed: u64,
}

pub trait Engine: Send + Sync + 'static {
    /// Non-blocking: enqueue on the model's engine thread (loading the model lazily on first
    /// use) and return at once.
    fn submit(&self, model: &ModelSpec, req: GenerateRequest) -> Result<Generation, EngineError>;
    fn stats(&self) -> EngineStats;
    /// Number of requests queued or running on this model.
    fn active_requests(&self, model_id: &str) -> usize;
    /// Cancel every request on the model and unload it (used by forced model deletion).
    fn unload(&self, model_id: &str);
    /// The prompt-prefix cache of each loaded model.
    fn prefix_cache(&self) -> Vec<PrefixCacheStats> {
        Vec::new()
    }
    /// Forget every cached prompt prefix (slots in use keep theirs).
    fn clear_prefix_cache(&self) {}
}

/// One loaded model's prompt-prefix cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixCacheStats {
    pub model: String,
    /// Tokens the model's free slots hold for reuse.
    pub cached_tokens: u64,
    /// Requests that reused a cached prefix, and those that did not.
    pub hits: u64,
    pub misses: u64,
    /// Prompt tokens not prefilled again thanks to the cache.
    pub reused_tokens: u64,
}
