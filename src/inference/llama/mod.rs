//! The model threads: the only file that touches llama-cpp-2 (and through it, FFI).
//!
//! Each loaded model gets one dedicated OS thread that owns the model and one
//! `LlamaContext` with `parallel` sequence slots, and runs a continuous-batching loop:
//!
//! 1. take new requests from its channel, tokenize them (prompt errors are reported at
//!    once), and queue them FIFO;
//! 2. drop cancelled requests, admit queued ones into free slots, fail those still waiting
//!    that waited longer than `max_wait` (from the model's load at the earliest);
//! 3. build one batch: one token for every sequence that is generating, then prompt chunks of
//!    sequences still reading their prompt, up to `batch_size` tokens in total (prompt
//!    processing is mixed into the same step as generation, so a new request never stalls
//!    the others for more than one step);
//! 4. decode, sample each sequence that produced logits, stream its text, and retire
//!    finished sequences (their KV cells are cleared and the slot is free for the next step).
//!
//! Callers only touch channels and atomics (see `models.rs`): nothing here runs on, or
//! blocks, a tokio runtime thread. llama-cpp-2 wraps the FFI; the one `unsafe` block here
//! reads llama.cpp's system-info string.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{send_logs_to_tracing, LogOptions};

use super::models::{AliveGuard, Command, Counters, Job};
use super::text::{StopFilter, Utf8Stream};
use super::{BusyReason, Completion, EngineConfig, EngineError, FinishReason, GenEvent, Timings};
use crate::config::GpuLayers;
use crate::metrics::ModelMetrics;
use prefix::SlotCache;
use sampler::Sampler;

pub(super) use prefix::PrefixStats;

mod prefix;
mod prompt;
mod sampler;

/// Where a model's layers go: `[models] gpu_layers` and `main_gpu`, engine-wide. Default: all
/// layers on GPU 0 on a build with a GPU backend, none on the CPU build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct GpuOffload {
    pub(super) layers: GpuLayers,
    pub(super) main_gpu: u32,
}

/// `llama_backend_init` may run once per process; every model thread shares this.
fn backend(gpu: GpuOffload) -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            let backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            let devices: Vec<String> = llama_cpp_2::list_llama_ggml_backend_devices()
                .into_iter()
                .map(|d| format!("{} ({})", d.name, d.description))
                .collect();
            tracing::info!(
                system_info = %system_info(),
                devices = %devices.join(", "),
                gpu_offload = backend.supports_gpu_offload(),
                gpu_layers = %gpu.layers,
                main_gpu = gpu.main_gpu,
                "llama.cpp backend ready"
            );
            if gpu.layers != GpuLayers::Count(0) && !backend.supports_gpu_offload() {
                tracing::warn!(
                    gpu_layers = %gpu.layers,
                    "models.gpu_layers is set, but this build has no GPU backend (build with \
                     --features cuda, vulkan or metal): every layer stays on the CPU"
                );
            }
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| EngineError::Load(format!("llama.cpp backend: {e}")))
}

/// llama.cpp's one-line summary of the CPU features its kernels use (AVX2, AVX512, ...),
/// so an operator can see which build is serving.
#[allow(unsafe_code)]
pub(super) fn system_info() -> String {
    // SAFETY: `llama_print_system_info` takes no arguments and returns a pointer to a
    // NUL-terminated static buffer (or null), which is copied out at once.
    unsafe {
        let info = llama_cpp_sys_2::llama_print_system_info();
        if info.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(info)
            .to_string_lossy()
            .trim()
            .to_owned()
    }
}

/// Starts the OS thread that loads the model and serves its requests until shutdown.
pub(super) fn spawn_model_thread(thread: ModelThread) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("llama-{}", thread.model_id))
        .spawn(move || thread.run())
        .map(drop)
}

/// Everything one model thread owns before the model is loaded.
pub(super) struct ModelThread {
    pub(super) cfg: EngineConfig,
    pub(super) gpu: GpuOffload,
    pub(super) model_id: String,
    pub(super) path: PathBuf,
    pub(super) commands: std_mpsc::Receiver<Command>,
    /// Requests queued or running; decremented right before a request's final event.
    pub(super) requests: Arc<AtomicUsize>,
    /// Requests holding a slot.
    pub(super) sequences: Arc<AtomicUsize>,
    pub(super) counters: Arc<Counters>,
    /// This model's prompt-prefix cache figures.
    pub(super) prefix: Arc<PrefixStats>,
    pub(super) _alive: AliveGuard,
}

impl ModelThread {
    fn run(self) {
        let started = Instant::now();
        let loaded = backend(self.gpu).and_then(|backend| {
            let model = load_model(backend, &self.path, self.gpu)?;
            Ok((backend, model))
        });
        let (backend, model) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => return self.fail_all(e),
        };
        let ctx = match new_context(&model, backend, &self.cfg) {
            Ok(ctx) => ctx,
            Err(e) => return self.fail_all(e),
        };
        tracing::info!(
            model = %self.model_id,
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let template = chat_template(&model);
        let mut batcher = Batcher {
            batch: LlamaBatch::new(step_capacity(&self.cfg), 1),
            slots: (0..self.cfg.parallel).map(|_| None).collect(),
            caches: (0..self.cfg.parallel)
                .map(|_| SlotCache::default())
                .collect(),
            queue: VecDeque::new(),
            model: &model,
            template,
            ctx,
            metrics: ModelMetrics::new(&self.model_id, self.cfg.parallel),
            worker: &self,
            ready: Instant::now(),
        };
        batcher.run();
        tracing::info!(model = %self.model_id, "model thread stopped");
    }

    /// The model could not be loaded: every request already sent gets the error.
    fn fail_all(self, error: EngineError) {
        // Dead first, so `submit` stops sending here and respawns (retries the load).
        self._alive.0.store(false, Ordering::Release);
        tracing::error!(model = %self.model_id, %error, "model failed to load");
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Generate(job) = command {
                self.finish_error(&job, error.clone());
            }
        }
    }

    fn finish_error(&self, job: &Job, error: EngineError) {
        self.requests.fetch_sub(1, Ordering::AcqRel);
        let _ = job.events.send(GenEvent::Error(error));
    }
}

fn load_model(
    backend: &LlamaBackend,
    path: &Path,
    gpu: GpuOffload,
) -> Result<LlamaModel, EngineError> {
    // One model on one GPU (`main_gpu`); llama.cpp ignores both on a build without one.
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(gpu.layers.llama_value())
        .with_split_mode(LlamaSplitMode::None)
        .with_main_gpu(i32::try_from(gpu.main_gpu).unwrap_or(i32::MAX));
    LlamaModel::load_from_file(backend, path, &params)
        .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))
}

/// Tokens in one decode step: a prompt chunk plus one token per generating sequence.
fn step_capacity(cfg: &EngineConfig) -> usize {
    (cfg.batch_size as usize).max(cfg.parallel + 1)
}

fn new_context<'m>(
    model: &'m LlamaModel,
    backend: &LlamaBackend,
    cfg: &EngineConfig,
) -> Result<LlamaContext<'m>, EngineError> {
    let n_ctx = cfg.ctx_per_slot.saturating_mul(cfg.parallel as u32);
    let n_batch = step_capacity(cfg) as u32;
    let threads = i32::try_from(cfg.threads).unwrap_or(i32::MAX);
    // One unified KV cache shared by all slots: sequences of any mix of lengths fit, and
    // mixed prompt/generation batches are not split per sequence. The per-slot limit
    // (prompt + completion <= ctx_per_slot) is enforced here, so the cache never fills.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(cfg.parallel as u32)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_kv_unified(true)
        // Keeping a finished sequence's cells for the next prompt with the same prefix
        // needs every cell: a sliding-window cache (Gemma 3) drops those behind the window.
        .with_swa_full(cfg.prompt_cache);
    model
        .new_context(backend, params)
        .map_err(|e| EngineError::Load(format!("create context: {e}")))
}

/// The model's own template, else llama.cpp's built-in one for its family.
fn chat_template(model: &LlamaModel) -> LlamaChatTemplate {
    if let Ok(template) = model.chat_template(None) {
        return template;
    }
    fallback_template(model)
}

fn fallback_template(model: &LlamaModel) -> LlamaChatTemplate {
    let arch = model.meta_val_str("general.architecture").ok();
    let name = match arch.as_deref() {
        None => "gemma",
        Some(a) if a.starts_with("gemma") => "gemma",
        Some(_) => "chatml",
    };
    LlamaChatTemplate::new(name).expect("built-in template names contain no NUL byte")
}

/// A request that was tokenized and waits for a slot.
struct Pending {
    job: Job,
    tokens: Vec<LlamaToken>,
    max_tokens: u32,
}

/// A request holding a slot; its sequence id is the slot index.
struct Sequence {
    job: Job,
    tokens: Vec<LlamaToken>,
    /// Tokens already in the KV cache.
    n_past: usize,
    /// Of those, taken over from the slot's cache at admission.
    cached_tokens: usize,
    /// Generated tokens fed back (in the KV cache after the prompt).
    fed: Vec<LlamaToken>,
    /// The last sampled token, to be fed at the next step.
    next: Option<LlamaToken>,
    max_tokens: u32,
    completion_tokens: u32,
    sampler: Sampler,
    utf8: Utf8Stream,
    stop: StopFilter,
    queue_ms: f64,
    admitted: Instant,
    first_token: Option<Instant>,
    /// When its last generated token was sampled (inter-token latency).
    last_token: Option<Instant>,
}

struct Batcher<'a, 'm> {
    worker: &'a ModelThread,
    model: &'m LlamaModel,
    template: LlamaChatTemplate,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    slots: Vec<Option<Sequence>>,
    /// What each slot's KV cells hold while it is free.
    caches: Vec<SlotCache>,
    queue: VecDeque<Pending>,
    /// When the model was loaded: slots exist from then on, so a request's wait for one is
    /// counted from then at the earliest (loading is not waiting behind other requests).
    ready: Instant,
    metrics: ModelMetrics,
}

impl Batcher<'_, '_> {
    fn run(&mut self) {
        loop {
            let idle = self.queue.is_empty() && self.slots.iter().all(Option::is_none);
            if !self.receive(idle) {
                self.shutdown();
                return;
            }
            self.drop_cancelled();
            self.admit();
            self.expire_waiting();
            if self.slots.iter().any(Option::is_some) {
                self.step();
            }
            self.report_occupancy();
        }
    }

    /// Busy slots, waiting requests and KV cells in use, for the metrics (after every step,
    /// so the gauges are back at zero before the thread blocks idle).
    fn report_occupancy(&self) {
        let busy = self.slots.iter().flatten().count();
        // Cells kept for the prefix cache are free for the next sequence: not "used".
        let kv_used = self.slots.iter().flatten().map(|s| s.n_past).sum();
        let capacity = self.worker.cfg.ctx_per_slot as usize * self.slots.len();
        self.metrics
            .occupancy(busy, self.queue.len(), kv_used, capacity);
    }

    /// Takes commands; blocks only when there is nothing else to do. Returns false on
    /// shutdown (explicit, or the engine was dropped).
    fn receive(&mut self, mut block: bool) -> bool {
        loop {
            let command = if block {
                match self.worker.commands.recv() {
                    Ok(c) => c,
                    Err(_) => return false,
                }
            } else {
                match self.worker.commands.try_recv() {
                    Ok(c) => c,
                    Err(std_mpsc::TryRecvError::Empty) => return true,
                    Err(std_mpsc::TryRecvError::Disconnected) => return false,
                }
            };
            block = false;
            match command {
                Command::Shutdown => return false,
                Command::Generate(job) => self.accept(job),
                Command::ClearCache => self.clear_cache(),
            }
        }
    }

    /// Tokenizes at arrival so a bad prompt fails now, not after waiting for a slot.
    fn accept(&mut self, job: Job) {
        match self.tokenize(&job.prompt) {
            Err(e) => self.worker.finish_error(&job, e),
            Ok(tokens) => {
                let ctx_per_slot = self.worker.cfg.ctx_per_slot;
                let max_prompt_tokens = ctx_per_slot - 1;
                let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
                if prompt_tokens > max_prompt_tokens {
                    let e = EngineError::ContextOverflow {
                        prompt_tokens,
                        max_prompt_tokens,
                    };
                    return self.worker.finish_error(&job, e);
                }
                let max_tokens = job.params.max_tokens.min(ctx_per_slot - prompt_tokens);
                self.queue.push_back(Pending {
                    job,
                    tokens,
                    max_tokens,
                });
            }
        }
    }

    fn drop_cancelled(&mut self) {
        let (cancelled, waiting): (Vec<_>, Vec<_>) =
            self.queue.drain(..).partition(|p| p.job.cancelled());
        self.queue = waiting.into();
        for pending in cancelled {
            let queue_ms = ms_since(pending.job.submitted);
            self.send_done(
                &pending.job,
                Completion {
                    finish_reason: FinishReason::Cancelled,
                    prompt_tokens: pending.tokens.len() as u32,
                    completion_tokens: 0,
                    timings: Timings {
                        queue_ms,
                        ..Timings::default()
                    },
                    cached: false,
                },
            );
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot].as_ref().is_some_and(|s| s.job.cancelled()) {
                self.finish(slot, FinishReason::Cancelled);
            }
        }
    }

    /// Requests still waiting after `admit` (no slot is free) that have waited longer than
    /// `max_wait` fail; the client is told to retry. The queue is in submission order, so
    /// they are at its front.
    fn expire_waiting(&mut self) {
        let max_wait = self.worker.cfg.max_wait;
        let ready = self.ready;
        while self
            .queue
            .front()
            .is_some_and(|p| p.job.submitted.max(ready).elapsed() > max_wait)
        {
            let Some(pending) = self.queue.pop_front() else {
                return;
            };
            let reason = BusyReason::WaitedTooLong {
                max_wait_secs: max_wait.as_secs(),
            };
            self.worker
                .finish_error(&pending.job, EngineError::Busy(reason));
        }
    }

    /// FIFO: the oldest waiting request takes a free slot, the one whose cached tokens
    /// share the longest prefix with its prompt.
    fn admit(&mut self) {
        while let Some(pending) = self.queue.front() {
            let slots = &self.slots;
            let chosen = if self.worker.cfg.prompt_cache {
                prefix::choose_slot(&self.caches, |i| slots[i].is_none(), &pending.tokens)
            } else {
                slots.iter().position(Option::is_none).map(|i| (i, 0))
            };
            let Some((free, keep)) = chosen else {
                return;
            };
            let Some(Pending {
                job,
                tokens,
                max_tokens,
            }) = self.queue.pop_front()
            else {
                return;
            };
            let cached_tokens = self.reuse(free, keep);
            self.worker.prefix.admitted(cached_tokens);
            self.metrics.prefix_reused(cached_tokens);
            let mut sampler = Sampler::new(self.model, &job.params);
            sampler.accept_prompt(&tokens);
            let _ = job.events.send(GenEvent::Started {
                prompt_tokens: tokens.len() as u32,
            });
            self.metrics.admitted(tokens.len());
            self.worker.sequences.fetch_add(1, Ordering::AcqRel);
            self.slots[free] = Some(Sequence {
                stop: StopFilter::new(job.params.stop.clone()),
                queue_ms: ms_since(job.submitted),
                job,
                tokens,
                n_past: cached_tokens,
                cached_tokens,
                fed: Vec::new(),
                next: None,
                max_tokens,
                completion_tokens: 0,
                sampler,
                utf8: Utf8Stream::default(),
                admitted: Instant::now(),
                first_token: None,
                last_token: None,
            });
        }
    }

    /// One decode over every active sequence.
    fn step(&mut self) {
        self.batch.clear();
        let capacity = step_capacity(&self.worker.cfg);
        // (slot, batch index of the token whose logits we sample from)
        let mut to_sample: Vec<(usize, i32)> = Vec::new();
        let mut in_batch = 0usize;
        let mut added = 0usize;
        let mut add_error = None;

        for (i, seq) in self.slots.iter().enumerate() {
            let Some(seq) = seq else { continue };
            if let Some(token) = seq.next {
                if let Err(e) = self.batch.add(token, seq.n_past as i32, &[i as i32], true) {
                    add_error = Some(e);
                }
                to_sample.push((i, added as i32));
                added += 1;
                in_batch += 1;
            }
        }
        // Prompt chunks fill the rest of the step, oldest slot first.
        let mut order: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .as_ref()
                    .is_some_and(|s| s.next.is_none() && s.n_past < s.tokens.len())
            })
            .collect();
        order.sort_by_key(|&i| self.slots[i].as_ref().map(|s| s.admitted));
        let mut prompt_chunks: Vec<(usize, usize)> = Vec::new();
        for i in order {
            let budget = capacity - added;
            if budget == 0 {
                break;
            }
            let Some(seq) = self.slots[i].as_ref() else {
                continue;
            };
            let end = seq.tokens.len().min(seq.n_past + budget);
            for pos in seq.n_past..end {
                let last = pos + 1 == seq.tokens.len();
                if let Err(e) = self
                    .batch
                    .add(seq.tokens[pos], pos as i32, &[i as i32], last)
                {
                    add_error = Some(e);
                }
                if last {
                    to_sample.push((i, added as i32));
                }
                added += 1;
            }
            prompt_chunks.push((i, end));
            in_batch += 1;
        }
        if added == 0 {
            return;
        }

        let decoded = match add_error {
            Some(e) => Err(format!("batch: {e}")),
            None => self.ctx.decode(&mut self.batch).map_err(|e| e.to_string()),
        };
        if let Err(e) = decoded {
            tracing::error!(model = %self.worker.model_id, error = %e, "decode failed");
            for i in 0..self.slots.len() {
                if let Some(seq) = self.slots[i].take() {
                    self.release(i, None);
                    self.worker
                        .finish_error(&seq.job, EngineError::Internal(format!("decode: {e}")));
                }
            }
            return;
        }
        let c = &self.worker.counters;
        c.decode_steps.fetch_add(1, Ordering::Relaxed);
        c.max_batch_sequences.fetch_max(in_batch, Ordering::Relaxed);
        self.metrics.decoded(in_batch, added);

        for (i, end) in prompt_chunks {
            if let Some(seq) = self.slots[i].as_mut() {
                seq.n_past = end;
            }
        }
        for (i, batch_index) in to_sample {
            self.sample(i, batch_index);
        }
    }

    /// Samples slot `i`'s next token from the logits at `batch_index` and streams it.
    fn sample(&mut self, i: usize, batch_index: i32) {
        let vocab = self.model.vocab();
        let Some(seq) = self.slots[i].as_mut() else {
            return;
        };
        // A fed token is now in the KV cache (prompt chunks were counted by `step`).
        if let Some(fed) = seq.next.take() {
            seq.n_past += 1;
            seq.fed.push(fed);
        }
        let now = Instant::now();
        seq.first_token.get_or_insert(now);
        let token = seq.sampler.sample(&self.ctx, batch_index);
        if vocab.is_eog(token) {
            return self.finish(i, FinishReason::Stop);
        }
        seq.completion_tokens += 1;
        self.worker
            .counters
            .tokens_generated
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .generated(seq.last_token.replace(now).map(|t| now - t));
        let piece = vocab.token_to_piece(token, false, None);
        let text = seq.utf8.push(&piece);
        let filtered = seq.stop.push(&text);
        if !filtered.emit.is_empty() {
            let _ = seq.job.events.send(GenEvent::Token(filtered.emit));
        }
        if filtered.stopped {
            self.finish(i, FinishReason::Stop);
        } else if seq.completion_tokens >= seq.max_tokens {
            self.finish(i, FinishReason::Length);
        } else {
            seq.next = Some(token);
        }
    }

    /// Retires slot `i`: flushes held-back text, frees its KV cells, sends `Done`.
    fn finish(&mut self, i: usize, mut reason: FinishReason) {
        let Some(mut seq) = self.slots[i].take() else {
            return;
        };
        let prompt_tokens = seq.tokens.len() as u32;
        // The cells hold the prompt as far as it was read, then the tokens fed back.
        let mut kept = std::mem::take(&mut seq.tokens);
        kept.truncate(seq.n_past);
        if seq.n_past > kept.len() {
            kept.extend_from_slice(&seq.fed);
        }
        self.release(i, Some(kept));
        if reason != FinishReason::Stop {
            let rest = seq.utf8.finish();
            let filtered = seq.stop.push(&rest);
            let mut tail = filtered.emit;
            if filtered.stopped {
                reason = FinishReason::Stop;
            } else {
                tail.push_str(&seq.stop.finish());
            }
            if !tail.is_empty() {
                let _ = seq.job.events.send(GenEvent::Token(tail));
            }
        }
        let end = Instant::now();
        let first = seq.first_token.unwrap_or(end);
        let generate_ms = (end - first).as_secs_f64() * 1e3;
        let tokens_per_second = if seq.completion_tokens > 1 && generate_ms > 0.0 {
            f64::from(seq.completion_tokens - 1) * 1e3 / generate_ms
        } else {
            0.0
        };
        let completion = Completion {
            finish_reason: reason,
            prompt_tokens,
            completion_tokens: seq.completion_tokens,
            timings: Timings {
                queue_ms: seq.queue_ms,
                cached_tokens: seq.cached_tokens as u32,
                prompt_ms: (first - seq.admitted).as_secs_f64() * 1e3,
                generate_ms,
                tokens_per_second,
            },
            cached: false,
        };
        self.send_done(&seq.job, completion);
    }

    /// Ends slot `i`'s sequence. With the prompt cache on, the slot keeps the cells of
    /// `kept` (the tokens at positions 0..) for a later prompt with the same prefix;
    /// otherwise, or with `None`, its cells are freed so the next sequence starts clean.
    fn release(&mut self, i: usize, kept: Option<Vec<LlamaToken>>) {
        self.worker.sequences.fetch_sub(1, Ordering::AcqRel);
        match kept.filter(|_| self.worker.cfg.prompt_cache) {
            Some(tokens) => {
                self.caches[i] = SlotCache {
                    tokens,
                    last_used: Some(Instant::now()),
                };
            }
            None => self.forget(i),
        }
        self.report_cached();
    }

    /// Frees slot `i`'s cells and forgets what they held.
    fn forget(&mut self, i: usize) {
        let _ = self.ctx.clear_kv_cache_seq(Some(i as u32), None, None);
        self.caches[i] = SlotCache::default();
    }

    /// Keeps the first `keep` cached tokens of free slot `i` for the sequence it is given
    /// and removes the rest; returns how many were kept (0 when the cache cannot remove a
    /// part of a sequence: the whole slot is cleared then).
    fn reuse(&mut self, i: usize, keep: usize) -> usize {
        let cached = std::mem::take(&mut self.caches[i]).tokens.len();
        let kept = if keep == cached {
            keep
        } else {
            let removed = self
                .ctx
                .clear_kv_cache_seq(Some(i as u32), Some(keep as u32), None);
            if matches!(removed, Ok(true)) {
                keep
            } else {
                self.forget(i);
                0
            }
        };
        self.report_cached();
        kept
    }

    /// Clears what every free slot holds (`DELETE /api/v1/cache`); busy slots keep theirs.
    fn clear_cache(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].is_none() {
                self.forget(i);
            }
        }
        self.report_cached();
    }

    fn report_cached(&self) {
        let held = self
            .caches
            .iter()
            .zip(&self.slots)
            .filter(|(_, s)| s.is_none())
            .map(|(c, _)| c.tokens.len())
            .sum();
        self.worker
            .prefix
            .cached_tokens
            .store(held, Ordering::Relaxed);
    }

    fn send_done(&self, job: &Job, completion: Completion) {
        self.worker.requests.fetch_sub(1, Ordering::AcqRel);
        self.worker
            .counters
            .requests_completed
            .fetch_add(1, Ordering::Relaxed);
        let _ = job.events.send(GenEvent::Done(completion));
    }

    /// Unload: everything running or waiting ends as cancelled.
    fn shutdown(&mut self) {
        self.metrics.unloaded();
        for i in 0..self.slots.len() {
            if self.slots[i].is_some() {
                self.finish(i, FinishReason::Cancelled);
            }
        }
        for pending in std::mem::take(&mut self.queue) {
            pending.job.cancel.cancel();
            self.queue.push_back(pending);
        }
        self.drop_cancelled();
        // Requests still in the channel were never seen: cancel them too.
        while let Ok(command) = self.worker.commands.try_recv() {
            if let Command::Generate(job) = command {
                self.send_done(
                    &job,
                    Completion {
                        finish_reason: FinishReason::Cancelled,
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        timings: Timings {
                            queue_ms: ms_since(job.submitted),
                            ..Timings::default()
                        },
                        cached: false,
                    },
                );
            }
        }
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
