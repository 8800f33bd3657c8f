//! OpenAI's request and response shapes for `/v1`, and their translation to ours.
//!
//! Unknown fields are ignored, as OpenAI does. Fields that would change what the answer
//! means and that Inferno does not implement (`tools`, `logprobs`, `response_format` other
//! than text, `n` above 1, ...) are a 400 naming the field, never silently dropped.

use poem_openapi::Object;
use serde_json::Value;

use crate::api::error::ApiError;
use crate::inference::runner::{InferenceInput, SamplingOverrides};
use crate::inference::{ChatMessage, ChatRole};

#[derive(Debug, Object)]
pub struct StreamOptions {
    /// Send one more chunk before `[DONE]` with the usage of the whole request.
    pub include_usage: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Debug, Object)]
pub struct CompletionRequest {
    /// Model id or alias; may be omitted when `[models] default` is set.
    pub model: Option<String>,
    /// A string, or an array of strings (one choice each).
    pub prompt: Value,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// A string or an array of strings.
    pub stop: Option<Value>,
    pub seed: Option<i64>,
    /// 1 only.
    pub n: Option<u32>,
    /// Accepted and ignored (never logged).
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Not supported: must be absent or null.
    pub logprobs: Option<Value>,
    /// Not supported: must be absent or false.
    pub echo: Option<bool>,
    /// Not supported: must be absent or null.
    pub suffix: Option<Value>,
    /// Not supported above 1.
    pub best_of: Option<u32>,
    /// Not supported: must be absent, null or empty.
    pub logit_bias: Option<Value>,
    /// Not supported other than 0.
    pub presence_penalty: Option<f32>,
    /// Not supported other than 0.
    pub frequency_penalty: Option<f32>,
}

/// One chat message: `content` is a string or an array of `{"type":"text","text"}` parts.
#[derive(Debug, Object)]
pub struct OpenAiMessage {
    /// `system`, `developer` (as system), `user` or `assistant`.
    pub role: String,
    pub content: Value,
    /// Accepted and ignored.
    pub name: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Object)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Vec<OpenAiMessage>,
    pub max_tokens: Option<u32>,
    /// Wins over `max_tokens` when both are given.
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Option<Value>,
    pub seed: Option<i64>,
    pub n: Option<u32>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Not supported: must be absent or empty.
    pub tools: Option<Value>,
    /// Not supported: must be absent, null or `none`.
    pub tool_choice: Option<Value>,
    /// Not supported: must be absent or empty.
    pub functions: Option<Value>,
    /// Not supported: must be absent, null or false.
    pub logprobs: Option<Value>,
    /// Not supported: must be absent or null.
    pub top_logprobs: Option<Value>,
    /// Only `{"type":"text"}`.
    pub response_format: Option<Value>,
    pub logit_bias: Option<Value>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

fn unsupported(field: &str, what: &str) -> ApiError {
    ApiError::field(
        field,
        format!("`{field}` is not supported by this server ({what})"),
    )
}

/// `Some(v)` that means something other than the default.
fn meaningful(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

fn no_penalties(presence: Option<f32>, frequency: Option<f32>) -> Result<(), ApiError> {
    if presence.is_some_and(|p| p != 0.0) {
        return Err(unsupported("presence_penalty", "only 0"));
    }
    if frequency.is_some_and(|p| p != 0.0) {
        return Err(unsupported("frequency_penalty", "only 0"));
    }
    Ok(())
}

fn one_choice(n: Option<u32>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(_) => Err(ApiError::field("n", "only n = 1 is supported")),
    }
}

fn stop_list(stop: Option<Value>) -> Result<Option<Vec<String>>, ApiError> {
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s])),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::field("stop", "stop must be a string or strings")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::field("stop", "stop must be a string or strings")),
    }
}

fn seed(seed: Option<i64>) -> Result<Option<u32>, ApiError> {
    seed.map(|s| {
        u32::try_from(s).map_err(|_| ApiError::field("seed", "seed must be 0 to 4294967295"))
    })
    .transpose()
}

fn sampling(
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop: Option<Value>,
    s: Option<i64>,
) -> Result<SamplingOverrides, ApiError> {
    Ok(SamplingOverrides {
        max_tokens,
        temperature,
        top_p,
        seed: seed(s)?,
        stop: stop_list(stop)?,
        ..SamplingOverrides::default()
    })
}

impl CompletionRequest {
    /// The prompts (one choice each) and the rest of the request as ours.
    pub fn inputs(self) -> Result<(Vec<String>, SamplingOverrides, Option<String>), ApiError> {
        one_choice(self.n)?;
        if meaningful(&self.logprobs) {
            return Err(unsupported("logprobs", "no log probabilities"));
        }
        if self.echo == Some(true) {
            return Err(unsupported("echo", "the prompt is not echoed"));
        }
        if meaningful(&self.suffix) {
            return Err(unsupported("suffix", "no insertion"));
        }
        if self.best_of.is_some_and(|b| b > 1) {
            return Err(unsupported("best_of", "only 1"));
        }
        if meaningful(&self.logit_bias) {
            return Err(unsupported("logit_bias", "no token biases"));
        }
        no_penalties(self.presence_penalty, self.frequency_penalty)?;
        let prompts = match self.prompt {
            Value::String(s) => vec![s],
            Value::Array(a) if !a.is_empty() => a
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(ApiError::field(
                        "prompt",
                        "prompt must be a string or an array of strings (token arrays are not supported)",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => {
                return Err(ApiError::field(
                    "prompt",
                    "prompt must be a string or a non-empty array of strings",
                ))
            }
        };
        let overrides = sampling(
            self.max_tokens,
            self.temperature,
            self.top_p,
            self.stop,
            self.seed,
        )?;
        Ok((prompts, overrides, self.model))
    }
}

fn role(r: &str) -> Result<ChatRole, ApiError> {
    match r {
        "system" | "developer" => Ok(ChatRole::System),
        "user" => Ok(ChatRole::User),
        "assistant" => Ok(ChatRole::Assistant),
        other => Err(ApiError::field(
            "messages",
            format!("role {other:?} is not supported (system, developer, user, assistant)"),
        )),
    }
}

fn content(v: Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Array(parts) => parts
            .into_iter()
            .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                (Some("text"), Some(t)) => Ok(t.to_string()),
                _ => Err(ApiError::field(
                    "messages",
                    "only text content parts ({\"type\":\"text\",\"text\":...}) are supported",
                )),
            })
            .collect(),
        Value::Null => Ok(String::new()),
        _ => Err(ApiError::field(
            "messages",
            "content must be a string or an array of text parts",
        )),
    }
}

impl ChatCompletionRequest {
    /// The request as ours.
    pub fn input(self) -> Result<InferenceInput, ApiError> {
        one_choice(self.n)?;
        if meaningful(&self.tools) {
            return Err(unsupported("tools", "no tool calls"));
        }
        if meaningful(&self.functions) {
            return Err(unsupported("functions", "no function calls"));
        }
        if meaningful(&self.tool_choice) && self.tool_choice != Some(Value::from("none")) {
            return Err(unsupported("tool_choice", "no tool calls"));
        }
        if meaningful(&self.logprobs) {
            return Err(unsupported("logprobs", "no log probabilities"));
        }
        if meaningful(&self.top_logprobs) {
            return Err(unsupported("top_logprobs", "no log probabilities"));
        }
        if let Some(f) = self.response_format.as_ref().filter(|v| !v.is_null()) {
            if f["type"].as_str() != Some("text") {
                return Err(unsupported("response_format", "text only"));
            }
        }
        if meaningful(&self.logit_bias) {
            return Err(unsupported("logit_bias", "no token biases"));
        }
        no_penalties(self.presence_penalty, self.frequency_penalty)?;
        let messages = self
            .messages
            .into_iter()
            .map(|m| {
                Ok(ChatMessage {
                    role: role(&m.role)?,
                    content: content(m.content)?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let sampling = sampling(
            self.max_completion_tokens.or(self.max_tokens),
            self.temperature,
            self.top_p,
            self.stop,
            self.seed,
        )?;
        Ok(InferenceInput {
            model: self.model,
            prompt: None,
            messages: Some(messages),
            sampling,
        })
    }
}

// ---- responses ----

#[derive(Debug, Object)]
pub struct ModelObject {
    pub id: String,
    /// `model`
    pub object: String,
    /// Unix time the model was registered.
    pub created: i64,
    pub owned_by: String,
}

#[derive(Debug, Object)]
pub struct ModelList {
    /// `list`
    pub object: String,
    pub data: Vec<ModelObject>,
}

#[derive(Debug, Clone, Object)]
pub struct OpenAiUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's breakdown of the prompt tokens.
#[derive(Debug, Clone, Object)]
pub struct PromptTokensDetails {
    /// Prompt tokens reused from the prompt-prefix KV cache.
    pub cached_tokens: u32,
}

impl OpenAiUsage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

#[derive(Debug, Object)]
pub struct CompletionChoice {
    pub text: String,
    pub index: u32,
    /// Always null.
    #[oai(skip_serializing_if_is_none = false)]
    pub logprobs: Option<Value>,
    /// `stop`, `length`, or `cancelled` when an operator or shutdown cut it short; null in
    /// a chunk before the last.
    #[oai(nullable, skip_serializing_if_is_none = false)]
    pub finish_reason: Option<String>,
}

/// `text_completion`, also each chunk of a streamed completion.
#[derive(Debug, Object)]
pub struct CompletionResponse {
    /// `cmpl-<job_id>` (the first job's, for several prompts).
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    /// `fp_` and the first 12 hex digits of the model file's SHA-256.
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[oai(nullable)]
    pub usage: Option<OpenAiUsage>,
}

#[derive(Debug, Object)]
pub struct AssistantMessage {
    /// `assistant`
    pub role: String,
    pub content: String,
}

#[derive(Debug, Object)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    #[oai(skip_serializing_if_is_none = false)]
    pub logprobs: Option<Value>,
    pub finish_reason: String,
}

/// `chat.completion`.
#[derive(Debug, Object)]
pub struct ChatCompletionResponse {
    /// `chatcmpl-<job_id>`
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: OpenAiUsage,
}

#[derive(Debug, Object)]
pub struct ChunkDelta {
    /// `assistant`, in the first chunk only.
    #[oai(skip_serializing_if_is_none)]
    pub role: Option<String>,
    /// Absent in the last chunk (`{}`).
    #[oai(skip_serializing_if_is_none)]
    pub content: Option<String>,
}

#[derive(Debug, Object)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: ChunkDelta,
    #[oai(skip_serializing_if_is_none = false)]
    pub logprobs: Option<Value>,
    #[oai(nullable, skip_serializing_if_is_none = false)]
    pub finish_reason: Option<String>,
}

/// `chat.completion.chunk`: one `data:` line of a streamed chat completion (the stream
/// ends with `data: [DONE]`).
#[derive(Debug, Object)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub system_fingerprint: String,
    /// Empty in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only in the last chunk, with `stream_options.include_usage`.
    #[oai(nullable)]
    pub usage: Option<OpenAiUsage>,
}
