//! `POST /api/v1/inference`: synchronous inference (`run_inference`).

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::error::ApiError;
use super::payload::StrictJson;
use super::security::Auth;
use super::stream::{queue_and_stream, require_streaming, JsonOrSse};
use super::ApiTags;
use crate::auth::perm;
use crate::inference::runner::{InferenceError, InferenceInput, SamplingOverrides};
use crate::inference::{ChatMessage, ChatRole};
use crate::queue::JobEnd;
use crate::server::AppState;
use poem::http::StatusCode;

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
    /// 0 = greedy (default); at most 2.
    pub temperature: Option<f32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u32>,
    /// Generation stops before any of these strings.
    pub stop: Option<Vec<String>>,
    /// Job priority: `low`, `normal` (default), `high` or `critical` (those two need
    /// `manage_queue`). Higher priorities start first.
    pub priority: Option<String>,
    /// Answer with server-sent events of the tokens as they come (also needs
    /// `use_streaming`) instead of one JSON body.
    pub stream: Option<bool>,
    /// With `stream`: the job runs on when the client disconnects, and can be re-joined
    /// at `GET /api/v1/jobs/{id}/stream`. Without it a disconnect cancels the job.
    pub detach: Option<bool>,
    /// `false`: neither answer from nor store into the response cache (when `[cache]
    /// responses` is on).
    pub cache: Option<bool>,
}

impl InferenceRequest {
    pub(super) fn wants_stream(&self) -> bool {
        self.stream == Some(true)
    }

    pub(super) fn detached(&self) -> bool {
        self.detach == Some(true)
    }

    pub(super) fn bypasses_cache(&self) -> bool {
        self.cache == Some(false)
    }
}

/// A synchronous answer: one JSON body, or server-sent events with `"stream": true`.
pub type InferenceAnswer = JsonOrSse<InferenceResponse>;

#[derive(Debug, Object)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl From<crate::events::TimingsRecord> for Timings {
    fn from(t: crate::events::TimingsRecord) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Timings {
            queue_ms: ms(t.queue_us),
            prompt_ms: ms(t.prompt_us),
            generate_ms: ms(t.generate_us),
            tokens_per_second: t.tokens_per_second_milli as f64 / 1000.0,
            cached_tokens: t.cached_tokens as u32,
        }
    }
}

impl From<crate::inference::Timings> for Timings {
    fn from(t: crate::inference::Timings) -> Self {
        Timings {
            queue_ms: t.queue_ms,
            prompt_ms: t.prompt_ms,
            generate_ms: t.generate_ms,
            tokens_per_second: t.tokens_per_second,
            cached_tokens: t.cached_tokens,
        }
    }
}

#[derive(Debug, Object)]
pub struct Timings {
    /// Waiting for a free slot.
    pub queue_ms: f64,
    /// Prompt processing up to the first token.
    pub prompt_ms: f64,
    pub generate_ms: f64,
    pub tokens_per_second: f64,
    /// Prompt tokens reused from the prompt-prefix KV cache (not prefilled again).
    pub cached_tokens: u32,
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
    /// Answered from the response cache, without running the model.
    pub cached: bool,
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

/// What the runner validates: the body without its queue fields.
pub(super) fn to_input(b: InferenceRequest) -> Result<InferenceInput, ApiError> {
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
    Ok(InferenceInput {
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
    })
}

/// The error a failed or dead job answers a waiting client with.
fn job_error(end: &JobEnd) -> ApiError {
    if let Some(e) = &end.error {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut err = ApiError::new(status, e.message.clone());
        err.code = e.code;
        if let Some(d) = &e.details {
            err = err.with_details(d.clone());
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            err = err.with_header("retry-after", 2);
        }
        return err;
    }
    let message = end
        .record
        .error
        .clone()
        .unwrap_or_else(|| "the job failed".into());
    match end.record.error_code.as_deref() {
        Some("VALIDATION_ERROR") => ApiError::validation(message),
        Some("NOT_FOUND") => ApiError::not_found(message),
        Some("CONFLICT") => ApiError::conflict(message),
        _ => ApiError::internal(message),
    }
}

/// Queues `job`, waits for its end and answers with it; the client leaving (its
/// connection `watch` closing) cancels the job.
pub(super) async fn complete(
    state: &AppState,
    ctx: &crate::events::EventContext,
    watch: Option<std::sync::Arc<super::conn::PeerWatch>>,
    job: crate::queue::NewJob,
) -> Result<InferenceResponse, ApiError> {
    let queue = state.queue();
    let enq = queue.enqueue(ctx, job).await?;
    let job_id = enq.record.job_id.clone();
    let mut end = queue.wait(&job_id);
    let gone = async move {
        match watch {
            Some(w) => w.closed().await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        end = &mut end => end,
        _ = gone => {
            // The client went away: its job stops (queued: never runs).
            let _ = queue.cancel(ctx, &job_id, "client").await;
            end.await
        }
    }
    .map_err(|_| ApiError::unavailable("the server is shutting down", 5))?;
    if !matches!(end.record.status.as_str(), "completed" | "cancelled") {
        return Err(job_error(&end));
    }
    // The run's own figures; the record's when the job had ended before the wait began.
    let (usage, timings) = match end.completion {
        Some(c) => (
            Usage {
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
            },
            c.timings.into(),
        ),
        None => (
            Usage {
                prompt_tokens: end.record.prompt_tokens.unwrap_or_default() as u32,
                completion_tokens: end.record.completion_tokens.unwrap_or_default() as u32,
            },
            end.record.timings.unwrap_or_default().into(),
        ),
    };
    Ok(InferenceResponse {
        id: job_id,
        model: end.record.model.clone(),
        text: end.text.unwrap_or_default(),
        finish_reason: end
            .record
            .finish_reason
            .clone()
            .unwrap_or_else(|| "cancelled".into()),
        usage,
        timings,
        cached: end.record.cached,
    })
}

pub struct InferenceApi;

#[OpenApi(tag = "ApiTags::Inference")]
impl InferenceApi {
    /// Run inference and wait for the whole answer, or stream it. Requires permission
    /// `run_inference` (and `use_streaming` with `"stream": true`).
    ///
    /// The request is a job of the durable queue (priority `normal` unless set), so it is
    /// visible to queue managers and survives a restart; a client that disconnects
    /// cancels it (unless `"detach": true` with `stream`). With `stream`, the answer is
    /// `text/event-stream`: `job`, `queued`, `token` (id `<job_id>:<index>`), then one
    /// `done` or `error` event; see `GET /api/v1/jobs/{id}/stream` to resume.
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
        body: StrictJson<InferenceRequest>,
    ) -> Result<InferenceAnswer, ApiError> {
        let priority = super::jobs::priority_of(body.0.priority.as_deref(), auth.principal())?;
        let (stream, detach) = (body.0.wants_stream(), body.0.detached());
        if stream {
            require_streaming(auth.principal())?;
        }
        let no_cache = body.0.bypasses_cache();
        let valid = state.runner().validate(to_input(body.0)?)?;
        let mut job = super::jobs::new_job(&state, auth.principal(), priority, valid, None);
        job.request.no_cache = no_cache;
        let watch = state.connections().watch(req.remote_addr());
        if stream {
            let sse = queue_and_stream(&state, req, &auth.ctx, job, detach).await?;
            return Ok(JsonOrSse::Stream(sse));
        }
        Ok(JsonOrSse::Json(Json(
            complete(&state, &auth.ctx, watch, job).await?,
        )))
    }
}
