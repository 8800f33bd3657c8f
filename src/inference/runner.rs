//! Runs one inference request end to end: validates it into a [`ValidInferenceRequest`],
//! records `inference.queued`, runs it on the engine, and records how it ended
//! (`inference.completed`, `inference.failed` or `inference.cancelled`).
//!
//! The job-queue issue will put the durable queue between `validate` and `execute`; both
//! sides already speak in job ids and events.

use std::sync::Arc;

use super::catalog::{Catalog, CatalogError, ModelView};
use super::{
    ChatMessage, Completion, Engine, EngineError, FinishReason, GenEvent, GenerateRequest, Prompt,
    SamplingParams,
};
use crate::auth::{perm, Granted};
use crate::events::{self as ev, ContentRecord, Event, EventContext, EventStore};

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
    pub job_id: String,
    pub model: ModelView,
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// The prompt as recorded in events (hash and length, or text).
    pub prompt_record: ContentRecord,
}

/// The outcome of a finished request.
#[derive(Debug)]
pub struct InferenceOutput {
    pub job_id: String,
    pub model: String,
    pub text: String,
    pub completion: Completion,
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
    store: EventStore,
    engine: Arc<dyn Engine>,
    catalog: Arc<Catalog>,
    max_prompt_chars: usize,
    default_model: Option<String>,
    record_content: bool,
}

/// Records `inference.cancelled` if the request is dropped before it ends (the client went
/// away); disarmed once the outcome is recorded.
struct CancelGuard {
    store: EventStore,
    ctx: EventContext,
    job_id: String,
    armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            let (store, ctx, job_id) = (self.store.clone(), self.ctx.clone(), self.job_id.clone());
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = store
                        .append(
                            &ctx,
                            vec![Event::InferenceCancelled(ev::InferenceCancelled {
                                job_id,
                                reason: "client disconnected".into(),
                            })],
                        )
                        .await;
                });
            }
        }
    }
}

impl Runner {
    pub fn new(
        store: EventStore,
        engine: Arc<dyn Engine>,
        catalog: Arc<Catalog>,
        max_prompt_chars: usize,
        default_model: Option<String>,
        record_content: bool,
    ) -> Self {
        Self {
            store,
            engine,
            catalog,
            max_prompt_chars,
            default_model,
            record_content,
        }
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
                let rec = ContentRecord::new(&p, self.record_content);
                (Prompt::Text(p), n, rec)
            }
            (None, Some(m)) => {
                if m.is_empty() {
                    return Err(invalid("messages", "messages must not be empty"));
                }
                let n = m.iter().map(|x| x.content.chars().count()).sum();
                let text = serde_json::to_string(&m).unwrap_or_default();
                let rec = ContentRecord::new(&text, self.record_content);
                (Prompt::Chat(m), n, rec)
            }
        };
        if chars == 0 {
            return Err(invalid("prompt", "prompt must not be empty"));
        }
        if chars > self.max_prompt_chars {
            return Err(invalid(
                "prompt",
                format!(
                    "prompt exceeds {} characters ({chars} given)",
                    self.max_prompt_chars
                ),
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
            job_id: uuid::Uuid::now_v7().to_string(),
            model,
            prompt,
            params,
            prompt_record: recorded,
        })
    }

    /// Runs a validated request to its end, recording each step. When `gone` resolves (the
    /// client went away) generation stops at the next token.
    pub async fn execute(
        &self,
        _cap: &Granted<perm::RunInference>,
        ctx: &EventContext,
        req: ValidInferenceRequest,
        gone: impl std::future::Future<Output = ()>,
    ) -> Result<InferenceOutput, InferenceError> {
        let model_id = req.model.record.id.clone();
        self.store
            .append(
                ctx,
                vec![Event::InferenceQueued(ev::InferenceQueued {
                    job_id: req.job_id.clone(),
                    model: model_id.clone(),
                    params: req.params.record(self.record_content),
                    prompt: req.prompt_record.clone(),
                })],
            )
            .await?;
        let mut guard = CancelGuard {
            store: self.store.clone(),
            ctx: ctx.clone(),
            job_id: req.job_id.clone(),
            armed: true,
        };
        let (result, left) = self.generate(&req, gone).await;
        guard.armed = false;
        let event = match &result {
            Ok((_, c)) if c.finish_reason == FinishReason::Cancelled => {
                Event::InferenceCancelled(ev::InferenceCancelled {
                    job_id: req.job_id.clone(),
                    reason: if left {
                        "client disconnected"
                    } else {
                        "cancelled"
                    }
                    .into(),
                })
            }
            Ok((text, c)) => Event::InferenceCompleted(ev::InferenceCompleted {
                job_id: req.job_id.clone(),
                finish_reason: finish_name(c.finish_reason).into(),
                prompt_tokens: c.prompt_tokens as u64,
                completion_tokens: c.completion_tokens as u64,
                timings: c.timings.record(),
                output: ContentRecord::new(text, self.record_content),
            }),
            Err(e) => Event::InferenceFailed(ev::InferenceFailed {
                job_id: req.job_id.clone(),
                error: e.to_string(),
            }),
        };
        self.store.append(ctx, vec![event]).await?;
        let (text, completion) = result?;
        Ok(InferenceOutput {
            job_id: req.job_id,
            model: model_id,
            text,
            completion,
        })
    }

    /// Collects the generation; the flag says whether `gone` fired.
    async fn generate(
        &self,
        req: &ValidInferenceRequest,
        gone: impl std::future::Future<Output = ()>,
    ) -> (Result<(String, Completion), EngineError>, bool) {
        let submitted = self.engine.submit(
            &req.model.spec(),
            GenerateRequest {
                prompt: req.prompt.clone(),
                params: req.params.clone(),
            },
        );
        let mut generation = match submitted {
            Ok(g) => g,
            Err(e) => return (Err(e), false),
        };
        let mut gone = std::pin::pin!(gone);
        let mut left = false;
        let mut text = String::new();
        loop {
            let event = tokio::select! {
                event = generation.next() => event,
                _ = &mut gone, if !left => {
                    left = true;
                    generation.cancel();
                    continue;
                }
            };
            match event {
                Some(GenEvent::Started { .. }) => {}
                Some(GenEvent::Token(piece)) => text.push_str(&piece),
                Some(GenEvent::Done(c)) => return (Ok((text, c)), left),
                Some(GenEvent::Error(e)) => return (Err(e), left),
                None => {
                    let e = EngineError::Internal(
                        "the engine stopped before the request finished".into(),
                    );
                    return (Err(e), left);
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
