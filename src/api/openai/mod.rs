//! OpenAI-compatible routes under `/v1`, for the official SDKs unchanged: `GET /v1/models`,
//! `POST /v1/completions`, `POST /v1/chat/completions` (with `stream`, ending in
//! `data: [DONE]`, and `stream_options.include_usage`).
//!
//! They authenticate like every route (`Authorization: Bearer <api key or JWT>`), need the
//! same permissions (`read_models`; `run_inference`, and `use_streaming` to stream), count
//! against the same rate limits, and every call is a job of the durable queue with its
//! events, so a queue manager sees it. Errors use OpenAI's body (`compat.rs`).

pub mod compat;
pub(crate) mod types;

use futures::StreamExt;
use poem::web::sse::Event;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use poem_openapi::OpenApi;

use super::error::ApiError;
use super::inference::{complete, InferenceResponse};
use super::jobs::new_job;
use super::payload::StrictJson;
use super::security::Auth;
use super::stream::{
    follow_job, keep_alive, require_streaming, slot, Follow, Item, JsonOrSse, Sse,
};
use super::ApiTags;
use crate::auth::perm;
use crate::events::EventContext;
use crate::inference::runner::{InferenceInput, ValidInferenceRequest};
use crate::queue::Priority;
use crate::server::AppState;
use compat::OpenAiError;
use types::*;

fn fingerprint(valid: &ValidInferenceRequest) -> String {
    let sha = &valid.model.record.sha256;
    format!("fp_{}", &sha[..sha.len().min(12)])
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An error in the middle of a stream, as OpenAI sends it (`data: {"error": ...}`).
fn stream_error(body: &super::error::ErrorBody) -> Event {
    let status = match body.error.code.as_str() {
        "VALIDATION_ERROR" => 400,
        "NOT_FOUND" => 404,
        "CONFLICT" => 409,
        "SERVICE_UNAVAILABLE" => 503,
        _ => 500,
    };
    let ours = body.to_json().unwrap_or_default();
    let status = poem::http::StatusCode::from_u16(status).unwrap_or_default();
    Event::message(compat::translate(status, &ours).to_json_string())
}

/// What every chunk of one streamed `/v1` answer repeats.
#[derive(Clone)]
struct Streamed {
    id: String,
    created: i64,
    model: String,
    fingerprint: String,
}

/// Validates, queues and follows one job for a `/v1` stream.
async fn start_stream(
    state: &AppState,
    req: &poem::Request,
    auth_ctx: &EventContext,
    principal: &crate::auth::Principal,
    input: InferenceInput,
) -> Result<
    (
        ValidInferenceRequest,
        impl futures::Stream<Item = Item> + Send + 'static,
        String,
    ),
    ApiError,
> {
    require_streaming(principal)?;
    let valid = state.runner().validate(input)?;
    let slot = slot(state)?;
    let job = new_job(
        state,
        principal,
        Priority::Normal,
        clone_valid(&valid),
        None,
    );
    let enq = state.queue().enqueue(auth_ctx, job).await?;
    let follow = Follow {
        from: 0,
        owner: Some(auth_ctx.clone()),
        peer: state.connections().watch(req.remote_addr()),
    };
    let job_id = enq.record.job_id;
    let items = follow_job(state.clone(), job_id.clone(), follow, slot);
    Ok((valid, items, job_id))
}

/// A copy of the validated request (the job takes one, the answer reads the other).
fn clone_valid(v: &ValidInferenceRequest) -> ValidInferenceRequest {
    ValidInferenceRequest {
        model: v.model.clone(),
        prompt: v.prompt.clone(),
        params: v.params.clone(),
        prompt_record: v.prompt_record.clone(),
    }
}

fn done_usage(j: &crate::events::projections::jobs::JobRecord) -> OpenAiUsage {
    OpenAiUsage::new(
        j.prompt_tokens.unwrap_or_default() as u32,
        j.completion_tokens.unwrap_or_default() as u32,
        j.timings.unwrap_or_default().cached_tokens as u32,
    )
}

pub struct OpenAiApi;

#[OpenApi(tag = "ApiTags::OpenAi")]
impl OpenAiApi {
    /// OpenAI: the models. Requires permission `read_models`.
    #[oai(
        path = "/v1/models",
        method = "get",
        operation_id = "openai_list_models"
    )]
    async fn models(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ReadModels>,
    ) -> Result<Json<ModelList>, OpenAiError> {
        let data = state
            .catalog()
            .list()?
            .into_iter()
            .filter(|m| m.record.enabled)
            .map(|m| ModelObject {
                id: m.record.id.clone(),
                object: "model".into(),
                created: m.record.registered_at.timestamp(),
                owned_by: "inferno".into(),
            })
            .collect();
        Ok(Json(ModelList {
            object: "list".into(),
            data,
        }))
    }

    /// OpenAI: text completion, one choice per prompt. Requires permission
    /// `run_inference` (and `use_streaming` with `stream`).
    #[oai(
        path = "/v1/completions",
        method = "post",
        operation_id = "openai_completions"
    )]
    async fn completions(
        &self,
        state: Data<&AppState>,
        req: &poem::Request,
        auth: Auth<perm::RunInference>,
        body: StrictJson<CompletionRequest>,
    ) -> Result<JsonOrSse<CompletionResponse, CompletionResponse>, OpenAiError> {
        let stream = body.0.stream == Some(true);
        let include_usage =
            body.0.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true);
        let (prompts, sampling, model) = body.0.inputs()?;
        let principal = auth.principal();
        let input = |prompt: String| InferenceInput {
            model: model.clone(),
            prompt: Some(prompt),
            messages: None,
            sampling: sampling.clone(),
        };
        if stream {
            if prompts.len() != 1 {
                return Err(ApiError::field("prompt", "streaming takes one prompt").into());
            }
            let prompt = prompts.into_iter().next().unwrap_or_default();
            let (valid, items, job_id) =
                start_stream(&state, req, &auth.ctx, principal, input(prompt)).await?;
            let s = Streamed {
                id: format!("cmpl-{job_id}"),
                created: now(),
                model: valid.model.record.id.clone(),
                fingerprint: fingerprint(&valid),
            };
            let chunk = move |text: String, finish: Option<String>, usage: Option<OpenAiUsage>| {
                let c = CompletionResponse {
                    id: s.id.clone(),
                    object: "text_completion".into(),
                    created: s.created,
                    model: s.model.clone(),
                    system_fingerprint: s.fingerprint.clone(),
                    choices: vec![CompletionChoice {
                        text,
                        index: 0,
                        logprobs: None,
                        finish_reason: finish,
                    }],
                    usage,
                };
                Event::message(c.to_json_string())
            };
            let events = items
                .flat_map(move |item| {
                    let out = match item {
                        Item::Token(_, text) => vec![chunk(text, None, None)],
                        Item::Done(j, _) => {
                            let usage = include_usage.then(|| done_usage(&j));
                            let finish = j.finish_reason.clone().unwrap_or("cancelled".into());
                            vec![
                                chunk(String::new(), Some(finish), usage),
                                Event::message("[DONE]"),
                            ]
                        }
                        Item::Error(e, _) => vec![stream_error(&e)],
                        Item::Queued(_) | Item::Retry(_) => vec![],
                    };
                    futures::stream::iter(out)
                })
                .boxed();
            return Ok(JsonOrSse::Stream(Sse::new(events, keep_alive(&state))));
        }
        let mut runs = Vec::new();
        let mut first = None;
        for prompt in prompts {
            let valid = state.runner().validate(input(prompt))?;
            first.get_or_insert_with(|| (valid.model.record.id.clone(), fingerprint(&valid)));
            let job = new_job(&state, principal, Priority::Normal, valid, None);
            let watch = state.connections().watch(req.remote_addr());
            runs.push(complete(&state, &auth.ctx, watch, job));
        }
        let answers: Vec<InferenceResponse> = futures::future::try_join_all(runs).await?;
        let (model, system_fingerprint) = first.unwrap_or_default();
        let (p, c, k) = answers.iter().fold((0, 0, 0), |(p, c, k), a| {
            (
                p + a.usage.prompt_tokens,
                c + a.usage.completion_tokens,
                k + a.timings.cached_tokens,
            )
        });
        Ok(JsonOrSse::Json(Json(CompletionResponse {
            id: format!(
                "cmpl-{}",
                answers.first().map(|a| a.id.as_str()).unwrap_or("")
            ),
            object: "text_completion".into(),
            created: now(),
            model,
            system_fingerprint,
            choices: answers
                .into_iter()
                .enumerate()
                .map(|(i, a)| CompletionChoice {
                    text: a.text,
                    index: i as u32,
                    logprobs: None,
                    finish_reason: Some(a.finish_reason),
                })
                .collect(),
            usage: Some(OpenAiUsage::new(p, c, k)),
        })))
    }

    /// OpenAI: chat completion. Requires permission `run_inference` (and
    /// `use_streaming` with `stream`: `chat.completion.chunk` events, then
    /// `data: [DONE]`).
    #[oai(
        path = "/v1/chat/completions",
        method = "post",
        operation_id = "openai_chat_completions"
    )]
    async fn chat(
        &self,
        state: Data<&AppState>,
        req: &poem::Request,
        auth: Auth<perm::RunInference>,
        body: StrictJson<ChatCompletionRequest>,
    ) -> Result<JsonOrSse<ChatCompletionResponse, ChatCompletionChunk>, OpenAiError> {
        let stream = body.0.stream == Some(true);
        let include_usage =
            body.0.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true);
        let input = body.0.input()?;
        let principal = auth.principal();
        if stream {
            let (valid, items, job_id) =
                start_stream(&state, req, &auth.ctx, principal, input).await?;
            let s = Streamed {
                id: format!("chatcmpl-{job_id}"),
                created: now(),
                model: valid.model.record.id.clone(),
                fingerprint: fingerprint(&valid),
            };
            let chunk = move |choices: Vec<ChunkChoice>, usage: Option<OpenAiUsage>| {
                let c = ChatCompletionChunk {
                    id: s.id.clone(),
                    object: "chat.completion.chunk".into(),
                    created: s.created,
                    model: s.model.clone(),
                    system_fingerprint: s.fingerprint.clone(),
                    choices,
                    usage,
                };
                Event::message(c.to_json_string())
            };
            let delta = |role: Option<&str>, content: Option<String>, finish: Option<String>| {
                vec![ChunkChoice {
                    index: 0,
                    delta: ChunkDelta {
                        role: role.map(str::to_string),
                        content,
                    },
                    logprobs: None,
                    finish_reason: finish,
                }]
            };
            let first = chunk(delta(Some("assistant"), Some(String::new()), None), None);
            let head = futures::stream::once(async move { first });
            let chunk2 = chunk;
            let events = items.flat_map(move |item| {
                let out = match item {
                    Item::Token(_, text) => vec![chunk2(delta(None, Some(text), None), None)],
                    Item::Done(j, _) => {
                        let finish = j.finish_reason.clone().unwrap_or("cancelled".into());
                        let mut v = vec![chunk2(delta(None, None, Some(finish)), None)];
                        if include_usage {
                            v.push(chunk2(Vec::new(), Some(done_usage(&j))));
                        }
                        v.push(Event::message("[DONE]"));
                        v
                    }
                    Item::Error(e, _) => vec![stream_error(&e)],
                    Item::Queued(_) | Item::Retry(_) => vec![],
                };
                futures::stream::iter(out)
            });
            let events = head.chain(events).boxed();
            return Ok(JsonOrSse::Stream(Sse::new(events, keep_alive(&state))));
        }
        let valid = state.runner().validate(input)?;
        let (model, system_fingerprint) = (valid.model.record.id.clone(), fingerprint(&valid));
        let job = new_job(&state, principal, Priority::Normal, valid, None);
        let watch = state.connections().watch(req.remote_addr());
        let a = complete(&state, &auth.ctx, watch, job).await?;
        Ok(JsonOrSse::Json(Json(ChatCompletionResponse {
            id: format!("chatcmpl-{}", a.id),
            object: "chat.completion".into(),
            created: now(),
            model,
            system_fingerprint,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: a.text,
                },
                logprobs: None,
                finish_reason: a.finish_reason,
            }],
            usage: OpenAiUsage::new(
                a.usage.prompt_tokens,
                a.usage.completion_tokens,
                a.timings.cached_tokens,
            ),
        })))
    }
}
