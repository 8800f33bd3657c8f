//! `POST /api/v1/inference`: synchronous inference (`run_inference`).

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::error::ApiError;
use super::security::Auth;
use super::ApiTags;
use crate::auth::perm;
use crate::inference::runner::{finish_name, InferenceError, InferenceInput, SamplingOverrides};
use crate::inference::{ChatMessage, ChatRole};
use crate::server::AppState;

impl From<InferenceError> for ApiError {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::Invalid { field, message } => ApiError::field(field, message),
            InferenceError::Conflict(m) => ApiError::conflict(m),
            InferenceError::Catalog(e) => e.into(),
            InferenceError::Engine(e) => e.into(),
            InferenceError::Store(e) => e.into(),
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct InferenceRequest {
    /// Model id or alias; may be omitted when `[models] default` is set.
    pub model: Option<String>,
    /// Plain text prompt (or `messages`), at most `[limits] max_prompt_chars` characters.
    pub prompt: Option<String>,
    /// Chat messages, rendered with the model's chat template.
    pub messages: Option<Vec<Message>>,
    /// Default 256, bounded by the context.
    pub max_tokens: Option<u32>,
    /// 0 = greedy (default).
    pub temperature: Option<f32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u32>,
    /// Generation stops before any of these strings.
    pub stop: Option<Vec<String>>,
}

#[derive(Debug, Object)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, Object)]
pub struct Timings {
    /// Waiting for a free slot.
    pub queue_ms: f64,
    /// Prompt processing up to the first token.
    pub prompt_ms: f64,
    pub generate_ms: f64,
    pub tokens_per_second: f64,
}

#[derive(Debug, Object)]
pub struct InferenceResponse {
    /// The job id.
    pub id: String,
    pub model: String,
    pub text: String,
    /// `stop`, `length` or `cancelled`.
    pub finish_reason: String,
    pub usage: Usage,
    pub timings: Timings,
}

fn role(r: &str) -> Result<ChatRole, ApiError> {
    match r {
        "system" => Ok(ChatRole::System),
        "user" => Ok(ChatRole::User),
        "assistant" => Ok(ChatRole::Assistant),
        other => Err(ApiError::field(
            "messages",
            format!("role must be system, user or assistant, not {other:?}"),
        )),
    }
}

pub struct InferenceApi;

#[OpenApi(tag = "ApiTags::Inference")]
impl InferenceApi {
    /// Run inference and wait for the whole answer. Requires permission `run_inference`.
    #[oai(
        path = "/api/v1/inference",
        method = "post",
        operation_id = "run_inference"
    )]
    async fn run(
        &self,
        state: Data<&AppState>,
        req: &poem::Request,
        auth: Auth<perm::RunInference>,
        body: Json<InferenceRequest>,
    ) -> Result<Json<InferenceResponse>, ApiError> {
        let b = body.0;
        let messages = match b.messages {
            Some(ms) => Some(
                ms.into_iter()
                    .map(|m| {
                        Ok(ChatMessage {
                            role: role(&m.role)?,
                            content: m.content,
                        })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()?,
            ),
            None => None,
        };
        let input = InferenceInput {
            model: b.model,
            prompt: b.prompt,
            messages,
            sampling: SamplingOverrides {
                max_tokens: b.max_tokens,
                temperature: b.temperature,
                top_k: b.top_k,
                top_p: b.top_p,
                min_p: b.min_p,
                repeat_penalty: b.repeat_penalty,
                seed: b.seed,
                stop: b.stop,
            },
        };
        let runner = state.runner();
        let valid = runner.validate(input)?;
        let watch = state.connections().watch(req.remote_addr());
        let gone = async move {
            match watch {
                Some(w) => w.closed().await,
                None => std::future::pending().await,
            }
        };
        let out = runner.execute(&auth.grant, &auth.ctx, valid, gone).await?;
        let c = out.completion;
        Ok(Json(InferenceResponse {
            id: out.job_id,
            model: out.model,
            text: out.text,
            finish_reason: finish_name(c.finish_reason).to_string(),
            usage: Usage {
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
            },
            timings: Timings {
                queue_ms: c.timings.queue_ms,
                prompt_ms: c.timings.prompt_ms,
                generate_ms: c.timings.generate_ms,
                tokens_per_second: c.timings.tokens_per_second,
            },
        }))
    }
}
