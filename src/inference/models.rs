//! The loaded models, seen from the caller's side: [`LlamaEngine`] keeps one handle per model
//! thread (a command channel plus shared counters), loads models lazily on first use, and
//! evicts the least recently used idle model when `max_loaded` would be exceeded.
//!
//! Everything here is plain Rust; the model threads themselves live in `llama.rs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::llama::{spawn_model_thread, GpuOffload, ModelThread, PrefixStats};
use super::{
    BusyReason, CancelHandle, Engine, EngineConfig, EngineError, EngineStats, GenEvent,
    GenerateRequest, Generation, ModelSpec, PrefixCacheStats, Prompt, SamplingParams,
};

/// The [`Engine`] backed by llama.cpp. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct LlamaEngine {
    cfg: EngineConfig,
    gpu: GpuOffload,
    models: Mutex<Models>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Models {
    by_id: HashMap<String, ModelHandle>,
    /// Logical clock for least-recently-used eviction.
    tick: u64,
}

/// The caller's side of one model thread.
#[derive(Debug)]
struct ModelHandle {
    path: PathBuf,
    commands: std_mpsc::Sender<Command>,
    /// Requests queued or running (incremented by `submit`, decremented by the thread
    /// before it sends a request's final event).
    requests: Arc<AtomicUsize>,
    /// Requests holding a slot.
    sequences: Arc<AtomicUsize>,
    /// Cleared when the thread exits (load failure, shutdown, panic).
    alive: Arc<AtomicBool>,
    prefix: Arc<PrefixStats>,
    last_used: u64,
}

/// Engine-wide statistics, updated by the model threads.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) decode_steps: AtomicU64,
    pub(super) max_batch_sequences: AtomicUsize,
    pub(super) tokens_generated: AtomicU64,
    pub(super) requests_completed: AtomicU64,
}

pub(super) enum Command {
    Generate(Job),
    /// Cancel everything and exit (unload).
    Shutdown,
    /// Forget the prompt prefixes the free slots hold.
    ClearCache,
}

/// A request on its way to, or waiting in, a model thread.
pub(super) struct Job {
    pub(super) prompt: Prompt,
    pub(super) params: SamplingParams,
    pub(super) events: UnboundedSender<GenEvent>,
    pub(super) cancel: CancelHandle,
    pub(super) submitted: Instant,
}

impl Job {
    /// Cancelled explicitly, or nobody is listening any more.
    pub(super) fn cancelled(&self) -> bool {
        self.cancel.is_cancelled() || self.events.is_closed()
    }
}

impl LlamaEngine {
    pub fn new(cfg: EngineConfig) -> Self {
        let cfg = EngineConfig {
            parallel: cfg.parallel.max(1),
            threads: cfg.threads.max(1),
            ctx_per_slot: cfg.ctx_per_slot.max(16),
            batch_size: cfg.batch_size.max(1),
            max_loaded: cfg.max_loaded.max(1),
            max_waiting: cfg.max_waiting,
            max_wait: cfg.max_wait,
            prompt_cache: cfg.prompt_cache,
        };
        Self {
            cfg,
            gpu: GpuOffload::default(),
            models: Mutex::default(),
            counters: Arc::default(),
        }
    }

    /// Layers of each model offloaded to the GPU and the GPU that holds them
    /// (`[models] gpu_layers`, `main_gpu`). Default: all layers on GPU 0 on a build with a
    /// GPU backend, none on the CPU build.
    pub fn with_gpu(mut self, layers: crate::config::GpuLayers, main_gpu: u32) -> Self {
        self.gpu = GpuOffload { layers, main_gpu };
        self
    }

    fn lock(&self) -> MutexGuard<'_, Models> {
        // A panic while holding this lock leaves the map consistent: keep going.
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_model(&self, spec: &ModelSpec) -> Result<ModelHandle, EngineError> {
        let (tx, rx) = std_mpsc::channel();
        let handle = ModelHandle {
            path: spec.path.clone(),
            commands: tx,
            requests: Arc::default(),
            sequences: Arc::default(),
            alive: Arc::new(AtomicBool::new(true)),
            prefix: Arc::default(),
            last_used: 0,
        };
        let thread = ModelThread {
            cfg: self.cfg,
            gpu: self.gpu,
            model_id: spec.id.clone(),
            path: spec.path.clone(),
            commands: rx,
            requests: handle.requests.clone(),
            sequences: handle.sequences.clone(),
            counters: self.counters.clone(),
            prefix: handle.prefix.clone(),
            _alive: AliveGuard(handle.alive.clone()),
        };
        spawn_model_thread(thread)
            .map_err(|e| EngineError::Internal(format!("spawn model thread: {e}")))?;
        Ok(handle)
    }
}

impl Engine for LlamaEngine {
    fn submit(&self, model: &ModelSpec, req: GenerateRequest) -> Result<Generation, EngineError> {
        req.params.validate()?;
        if matches!(&req.prompt, Prompt::Chat(m) if m.is_empty()) {
            return Err(EngineError::InvalidParams(
                "messages must not be empty".into(),
            ));
        }
        if !model.path.is_file() {
            return Err(EngineError::ModelNotFound(model.id.clone()));
        }
        let mut models = self.lock();
        models.tick += 1;
        let tick = models.tick;
        let stale = models
            .by_id
            .get(&model.id)
            .is_some_and(|h| !h.alive.load(Ordering::Acquire) || h.path != model.path);
        if stale {
            if let Some(old) = models.by_id.remove(&model.id) {
                let _ = old.commands.send(Command::Shutdown);
            }
        }
        if !models.by_id.contains_key(&model.id) {
            if models.by_id.len() >= self.cfg.max_loaded {
                // Evict the least recently used idle model; if every model is busy, refuse
                // rather than overcommit memory: the client retries after a 503.
                let idle = least_recently_used_idle(
                    models
                        .by_id
                        .iter()
                        .map(|(id, h)| (id, h.last_used, h.requests.load(Ordering::Acquire))),
                )
                .ok_or(EngineError::Overloaded)?;
                if let Some(old) = models.by_id.remove(&idle) {
                    tracing::info!(model = %idle, "unloading least recently used model");
                    let _ = old.commands.send(Command::Shutdown);
                }
            }
            let handle = self.spawn_model(model)?;
            models.by_id.insert(model.id.clone(), handle);
        }
        let handle = models
            .by_id
            .get_mut(&model.id)
            .ok_or_else(|| EngineError::Internal("model handle vanished".into()))?;
        handle.last_used = tick;
        // Requests beyond the free slots wait; at most `max_waiting` of them. Counted on
        // everything queued or running (`submit` holds the lock, so no two callers race for
        // the last place): requests still on their way to a free slot do not count as
        // waiting once they reach it.
        let admitted = self.cfg.parallel.saturating_add(self.cfg.max_waiting);
        if handle.requests.load(Ordering::Acquire) >= admitted {
            return Err(EngineError::Busy(BusyReason::WaitingListFull {
                max_waiting: self.cfg.max_waiting,
            }));
        }

        let (generation, events, cancel) = Generation::channel();
        handle.requests.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            prompt: req.prompt,
            params: req.params,
            events,
            cancel,
            submitted: Instant::now(),
        };
        if handle.commands.send(Command::Generate(job)).is_err() {
            handle.requests.fetch_sub(1, Ordering::AcqRel);
            models.by_id.remove(&model.id);
            return Err(EngineError::Internal("model thread is gone".into()));
        }
        Ok(generation)
    }

    fn stats(&self) -> EngineStats {
        let models = self.lock();
        let mut loaded_models: Vec<String> = models.by_id.keys().cloned().collect();
        loaded_models.sort();
        let c = &self.counters;
        EngineStats {
            loaded_models,
            active_sequences: models
                .by_id
                .values()
                .map(|h| h.sequences.load(Ordering::Acquire))
                .sum(),
            decode_steps: c.decode_steps.load(Ordering::Relaxed),
            max_batch_sequences: c.max_batch_sequences.load(Ordering::Relaxed),
            tokens_generated: c.tokens_generated.load(Ordering::Relaxed),
            requests_completed: c.requests_completed.load(Ordering::Relaxed),
        }
    }

    fn active_requests(&self, model_id: &str) -> usize {
        self.lock()
            .by_id
            .get(model_id)
            .map_or(0, |h| h.requests.load(Ordering::Acquire))
    }

    fn prefix_cache(&self) -> Vec<PrefixCacheStats> {
        let models = self.lock();
        let mut stats: Vec<PrefixCacheStats> = models
            .by_id
            .iter()
            .map(|(id, h)| PrefixCacheStats {
                model: id.clone(),
                cached_tokens: h.prefix.cached_tokens.load(Ordering::Relaxed) as u64,
                hits: h.prefix.hits.load(Ordering::Relaxed),
                misses: h.prefix.misses.load(Ordering::Relaxed),
                reused_tokens: h.prefix.reused_tokens.load(Ordering::Relaxed),
            })
            .collect();
        stats.sort_by(|a, b| a.model.cmp(&b.model));
        stats
    }

    fn clear_prefix_cache(&self) {
        for handle in self.lock().by_id.values() {
            let _ = handle.commands.send(Command::ClearCache);
        }
    }

    fn unload(&self, model_id: &str) {
        if let Some(handle) = self.lock().by_id.remove(model_id) {
            tracing::info!(model = %model_id, "unloading model");
            let _ = handle.commands.send(Command::Shutdown);
        }
    }
}

impl Drop for LlamaEngine {
    fn drop(&mut self) {
        // Threads finish on their own (cancelling what they hold); no join, so dropping the
        // engine never blocks the caller for a decode step.
        for (_, handle) in self.lock().by_id.drain() {
            let _ = handle.commands.send(Command::Shutdown);
        }
    }
}

/// Marks the model handle dead when the thread exits, however it exits.
pub(super) struct AliveGuard(pub(super) Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Which model to evict: the least recently used among those with no request queued or
/// running. Items are `(id, last_used, active_requests)`.
fn least_recently_used_idle<'a>(
    models: impl Iterator<Item = (&'a String, u64, usize)>,
) -> Option<String> {
    models
        .filter(|&(_, _, active)| active == 0)
        .min_by_key(|&(_, last_used, _)| last_used)
        .map(|(id, _, _)| id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_idle_model() {
        let (a, b, c) = ("a".to_string(), "b".to_string(), "c".to_string());
        let pick = |m: Vec<(&String, u64, usize)>| least_recently_used_idle(m.into_iter());
        assert_eq!(pick(vec![(&a, 1, 0), (&b, 2, 0)]), Some("a".into()));
        assert_eq!(
            pick(vec![(&a, 1, 3), (&b, 5, 0), (&c, 4, 0)]),
            Some("c".into())
        );
        assert_eq!(pick(vec![(&a, 1, 1), (&b, 2, 1)]), None);
    }
}
