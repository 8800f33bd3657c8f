//! Inference requests on both sides of the job queue: [`Runner::validate`] turns what a
//! client sent into a [`ValidInferenceRequest`] (then a queued job), and the [`Executor`]
//! impl runs a job's request on the engine for a queue worker. The queue records each
//! step as `job.*` events.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::catalog::{Catalog, CatalogError, ModelView};
use super::{
    ChatMessage, Completion, Engine, EngineError, FinishReason, GenEvent, GenerateRequest, Prompt,
    SamplingParams,
};
use crate::api::error::ApiError;
use crate::cache::{self, CachedAnswer, ResponseCache};
use crate::events::ContentRecord;
use crate::queue::{ExecError, Executor, JobCancel, JobRequest, StoredPrompt, TokenSink};
use poem::http::StatusCode;

/// What a client asked for, before validation. Unset sampling fields take the model's
/// defaults, then the server's.
#[derive(Debug, Default)]
pub struct InferenceInput {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub sampling: SamplingOverrides,
}

/// Sampling fields a client or a model's defaults may set; `None` keeps the value below.
#[derive(Debug, Clone, Default)]
pub struct SamplingOverrides {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u32>,
    pub stop: Option<Vec<String>>,
}

impl SamplingOverrides {
    /// `base` with every set field replaced.
    pub fn apply(self, mut base: SamplingParams) -> SamplingParams {
        if let Some(v) = self.max_tokens {
            base.max_tokens = v;
        }
        if let Some(v) = self.temperature {
            base.temperature = v;
        }
        base.top_k = self.top_k.or(base.top_k);
        base.top_p = self.top_p.or(base.top_p);
        base.min_p = self.min_p.or(base.min_p);
        base.repeat_penalty = self.repeat_penalty.or(base.repeat_penalty);
        base.seed = self.seed.or(base.seed);
        if let Some(stop) = self.stop {
            base.stop = stop;
        }
        base
    }
}

/// A request that passed every check; the only thing [`Runner::execute`] accepts.
#[derive(Debug)]
pub struct ValidInferenceRequest {
    pub model: ModelView,
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// The prompt as recorded in events (hash and length, or text).
    pub prompt_record: ContentRecord,
}

/// Why a request failed; each variant says how it reaches the client.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// 400 VALIDATION_ERROR naming the field.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// 409 CONFLICT (model disabled).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] crate::events::EventError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> InferenceError {
    InferenceError::Invalid {
        field,
        message: message.into(),
    }
}

pub struct Runner {
    engine: Arc<dyn Engine>,
    responses: Arc<ResponseCache>,
    catalog: Arc<Catalog>,
    /// Both change live (`PATCH /api/v1/config`).
    max_prompt_chars: AtomicUsize,
    default_model: Option<String>,
    record_content: AtomicBool,
}

impl Runner {
    pub fn new(
        engine: Arc<dyn Engine>,
        responses: Arc<ResponseCache>,
        catalog: Arc<Catalog>,
        max_prompt_chars: usize,
        default_model: Option<String>,
        record_content: bool,
    ) -> Self {
        Self {
            engine,
            responses,
            catalog,
            max_prompt_chars: AtomicUsize::new(max_prompt_chars),
            default_model,
            record_content: AtomicBool::new(record_content),
        }
    }

    /// `[limits] max_prompt_chars` and `[audit] record_content`, from the next request on.
    pub fn set_limits(&self, max_prompt_chars: usize, record_content: bool) {
        self.max_prompt_chars
            .store(max_prompt_chars, Ordering::Relaxed);
        self.record_content.store(record_content, Ordering::Relaxed);
    }

    /// Checks the request against the limits, the catalog and the sampling rules.
    pub fn validate(&self, input: InferenceInput) -> Result<ValidInferenceRequest, InferenceError> {
        let (prompt, chars, recorded) = match (input.prompt, input.messages) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "prompt",
                    "send either prompt or messages, not both",
                ))
            }
            (None, None) => return Err(invalid("prompt", "prompt or messages is required")),
            (Some(p), None) => {
                let n = p.chars().count();
                let rec = ContentRecord::new(&p, self.record_content());
                (Prompt::Text(p), n, rec)
            }
            (None, Some(m)) => {
                if m.is_empty() {
                    return Err(invalid("messages", "messages must not be empty"));
                }
                let n = m.iter().map(|x| x.content.chars().count()).sum();
                let text = serde_json::to_string(&m).unwrap_or_default();
                let rec = ContentRecord::new(&text, self.record_content());
                (Prompt::Chat(m), n, rec)
            }
        };
        if chars == 0 {
            return Err(invalid("prompt", "prompt must not be empty"));
        }
        let max_prompt_chars = self.max_prompt_chars.load(Ordering::Relaxed);
        if chars > max_prompt_chars {
            return Err(invalid(
                "prompt",
                format!("prompt exceeds {max_prompt_chars} characters ({chars} given)"),
            ));
        }
        let model_name = input
            .model
            .or_else(|| self.default_model.clone())
            .ok_or_else(|| invalid("model", "model is required (no [models] default is set)"))?;
        let model = self.catalog.resolve(&model_name)?;
        if !model.record.enabled {
            return Err(InferenceError::Conflict(format!(
                "model {:?} is disabled",
                model.record.id
            )));
        }
        let params = input.sampling.apply(model.defaults());
        params.validate().map_err(|e| match e {
            EngineError::InvalidParams(m) => invalid(SamplingParams::invalid_field(&m), m),
            other => invalid("params", other.to_string()),
        })?;
        Ok(ValidInferenceRequest {
            model,
            prompt,
            params,
            prompt_record: recorded,
        })
    }

    /// The request as a queue job stores it.
    pub fn job_request(req: &ValidInferenceRequest) -> JobRequest {
        JobRequest {
            model: req.model.record.id.clone(),
            prompt: match &req.prompt {
                Prompt::Text(t) => StoredPrompt::Text(t.clone()),
                Prompt::Chat(m) => StoredPrompt::Chat(m.clone()),
            },
            params: req.params.clone(),
            no_cache: false,
        }
    }

    pub fn record_content(&self) -> bool {
        self.record_content.load(Ordering::Relaxed)
    }
}

fn exec_error(e: ApiError, retryable: bool) -> ExecError {
    ExecError {
        status: e.status.as_u16(),
        code: e.code,
        message: e.message,
        details: e.details,
        retryable,
    }
}

/// An engine error as a job records it. Load and internal failures keep their cause in the
/// server log only (it may name files): the job says which kind of failure it was.
fn engine_error(e: EngineError) -> ExecError {
    let r = retryable(&e);
    let message = match &e {
        EngineError::Load(_) => Some("the model failed to load"),
        EngineError::Internal(_) => Some("internal engine error"),
        _ => None,
    };
    match message {
        Some(m) => {
            tracing::error!(error = %e, "inference job failed");
            exec_error(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m), r)
        }
        None => exec_error(ApiError::from(e), r),
    }
}

/// Whether another attempt may succeed after this engine error.
fn retryable(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Load(_)
            | EngineError::Internal(_)
            | EngineError::Overloaded
            | EngineError::Busy(_)
    )
}

#[async_trait::async_trait]
impl Executor for Runner {
    /// Runs a queued job on the engine. The model is resolved again: one deleted or
    /// disabled since the job was queued fails it without retry.
    async fn execute(
        &self,
        job: &JobRequest,
        cancel: &JobCancel,
        tokens: &mut TokenSink,
    ) -> Result<(String, Completion), ExecError> {
        let model = self
            .catalog
            .resolve(&job.model)
            .map_err(|e| exec_error(ApiError::from(e), false))?;
        if !model.record.enabled {
            return Err(exec_error(
                ApiError::conflict(format!("model {:?} is disabled", model.record.id)),
                false,
            ));
        }
        let cache_key =
            (self.responses.enabled() && !job.no_cache && cache::deterministic(&job.params))
                .then(|| cache::key(&model.record.sha256, &job.prompt, &job.params));
        if let Some(hit) = cache_key.as_deref().and_then(|k| self.responses.get(k)) {
            tokens.push(&hit.text);
            let completion = Completion {
                finish_reason: hit.finish_reason,
                prompt_tokens: hit.prompt_tokens,
                completion_tokens: hit.completion_tokens,
                timings: Default::default(),
                cached: true,
            };
            return Ok((hit.text, completion));
        }
        let prompt = match &job.prompt {
            StoredPrompt::Text(t) => Prompt::Text(t.clone()),
            StoredPrompt::Chat(m) => Prompt::Chat(m.clone()),
        };
        let mut generation = self
            .engine
            .submit(
                &model.spec(),
                GenerateRequest {
                    prompt,
                    params: job.params.clone(),
                },
            )
            .map_err(engine_error)?;
        let mut text = String::new();
        let mut stopping = false;
        loop {
            let event = tokio::select! {
                event = generation.next() => event,
                _ = cancel.cancelled(), if !stopping => {
                    stopping = true;
                    generation.cancel();
                    continue;
                }
            };
            match event {
                Some(GenEvent::Started { .. }) => {}
                Some(GenEvent::Token(piece)) => {
                    tokens.push(&piece);
                    text.push_str(&piece);
                }
                Some(GenEvent::Done(c)) => {
                    if let Some(key) =
                        cache_key.filter(|_| c.finish_reason != FinishReason::Cancelled)
                    {
                        let answer = CachedAnswer {
                            model: model.record.id.clone(),
                            text: text.clone(),
                            finish_reason: c.finish_reason,
                            prompt_tokens: c.prompt_tokens,
                            completion_tokens: c.completion_tokens,
                            stored_at: chrono::Utc::now(),
                        };
                        if let Err(e) = self.responses.put(&key, &answer) {
                            tracing::warn!(error = %e, "storing a response in the cache failed");
                        }
                    }
                    return Ok((text, c));
                }
                Some(GenEvent::Error(e)) => return Err(engine_error(e)),
                None => {
                    return Err(engine_error(EngineError::Internal(
                        "the engine stopped before the request finished".into(),
                    )))
                }
            }
        }
    }
}

pub fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    }
}
