//! What makes `/v1` answer like OpenAI's API: its error body
//! `{"error":{"message","type","param","code"}}` for every error a `/v1` request meets
//! (authentication, rate limits, body limits and parse errors included, which happen before
//! any handler), and OpenAI's rate-limit header names beside ours.

use std::sync::Arc;

use poem::error::ResponseError;
use poem::http::header::HeaderName;
use poem::http::{HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response, Result};
use poem_openapi::registry::{MetaMediaType, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Object};
use serde_json::Value;

use crate::api::error::ApiError;

/// OpenAI's error body.
#[derive(Debug, Object)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Debug, Object)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `conflict_error`, `rate_limit_error` or `server_error`.
    #[oai(rename = "type")]
    pub kind: String,
    /// The request field at fault, when one is.
    #[oai(nullable, skip_serializing_if_is_none = false)]
    pub param: Option<String>,
    /// Inferno's error code in lower case (`validation_error`, `permission_denied`, ...).
    #[oai(nullable, skip_serializing_if_is_none = false)]
    pub code: Option<String>,
}

fn kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

/// Our error body (`{"error":{"code","message","details"}}`) in OpenAI's shape.
pub(super) fn translate(status: StatusCode, ours: &Value) -> OpenAiErrorBody {
    let e = &ours["error"];
    OpenAiErrorBody {
        error: OpenAiErrorDetail {
            message: e["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_string(),
            kind: kind(status).into(),
            param: e["details"]["field"].as_str().map(str::to_string),
            code: e["code"].as_str().map(str::to_lowercase),
        },
    }
}

/// A `/v1` handler's error: an [`ApiError`], whose body the compat layer answers in
/// OpenAI's shape (as it does for errors raised before any handler).
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(e: E) -> Self {
        OpenAiError(e.into())
    }
}

impl std::fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for OpenAiError {}

impl ResponseError for OpenAiError {
    fn status(&self) -> StatusCode {
        self.0.status
    }

    fn as_response(&self) -> Response {
        self.0.as_response()
    }
}

impl ApiResponse for OpenAiError {
    fn meta() -> MetaResponses {
        let mut meta = ApiError::meta();
        for r in &mut meta.responses {
            r.content = vec![MetaMediaType {
                content_type: "application/json; charset=utf-8",
                schema: OpenAiErrorBody::schema_ref(),
            }];
        }
        meta
    }

    fn register(registry: &mut Registry) {
        OpenAiErrorBody::register(registry);
    }
}

const OPENAI_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const OPENAI_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const OPENAI_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");

/// Adds OpenAI's rate-limit header names (the reset as `<seconds>s`) beside ours.
fn openai_rate_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    let copy = |from: &str| h.get(from).cloned();
    let (limit, remaining, reset) = (
        copy("x-ratelimit-limit"),
        copy("x-ratelimit-remaining"),
        copy("x-ratelimit-reset"),
    );
    if let Some(v) = limit {
        h.insert(OPENAI_LIMIT, v);
    }
    if let Some(v) = remaining {
        h.insert(OPENAI_REMAINING, v);
    }
    if let Some(v) = reset.and_then(|v| v.to_str().ok().map(|s| format!("{s}s"))) {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(OPENAI_RESET, v);
        }
    }
}

/// Around the whole app: `/v1` answers get OpenAI's error body and header names.
pub async fn compat<E: Endpoint>(ep: Arc<E>, req: Request) -> Result<Response> {
    let openai = req.uri().path().starts_with("/v1/");
    let resp = ep.call(req).await?.into_response();
    if !openai {
        return Ok(resp);
    }
    let mut resp = resp;
    openai_rate_headers(&mut resp);
    let status = resp.status();
    if !status.is_client_error() && !status.is_server_error() {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = body.into_bytes().await.unwrap_or_default();
    let ours: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let translated = translate(status, &ours).to_json_string();
    let mut resp = Response::from_parts(parts, translated.into());
    resp.headers_mut().remove("content-length");
    Ok(resp)
}
