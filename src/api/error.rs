//! The one error body every failure is written in:
//! `{"error": {"code": "...", "message": "...", "details": null | {...}}}`.
//!
//! Handlers return [`ApiError`]; [`error_response`] turns any other error (poem's own, such
//! as an unknown route or malformed JSON, or poem-openapi's) into the same body.

use poem::error::ResponseError;
use poem::http::{HeaderName, HeaderValue, StatusCode};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Object};
use serde_json::{json, Value};

tokio::task_local! {
    /// The current request's id, so an internal error can quote it.
    pub static REQUEST_ID: String;
}

/// The error envelope.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Object)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `VALIDATION_ERROR`.
    pub code: String,
    /// Human-readable explanation; never contains secrets.
    pub message: String,
    /// Null, or an object that helps the client (e.g. the field that failed).
    pub details: Option<Value>,
}

/// An error as the client sees it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The code for a status, per the table in the README.
pub fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "VALIDATION_ERROR",
        401 => "AUTHENTICATION_FAILED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        408 => "REQUEST_TIMEOUT",
        409 => "CONFLICT",
        413 | 431 => "PAYLOAD_TOO_LARGE",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        429 => "RATE_LIMITED",
        503 => "SERVICE_UNAVAILABLE",
        402..=499 => "VALIDATION_ERROR",
        _ => "INTERNAL_ERROR",
    }
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code_for(status),
            message: message.into(),
            details: None,
            headers: Vec::new(),
        }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl ToString) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((HeaderName::from_static(name), v));
        }
        self
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A validation error naming the offending field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(message).with_details(json!({ "field": field }))
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(required: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            format!("this action requires the `{required}` permission"),
        )
        .with_details(json!({ "required": required }))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes"),
        )
        .with_details(json!({ "limit_bytes": limit }))
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("rate limit exceeded; retry after {retry_after_secs} s"),
        )
        .with_details(json!({ "retry_after": retry_after_secs }))
        .with_header("retry-after", retry_after_secs)
    }

    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
            .with_header("retry-after", retry_after_secs)
    }

    /// An internal error: the cause is logged, the client sees only the request id.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let request_id = REQUEST_ID.try_with(|id| id.clone()).ok();
        tracing::error!(request_id = request_id.as_deref().unwrap_or("-"), error = %cause, "internal error");
        let message = match &request_id {
            Some(id) => format!("internal error; quote request id {id} when reporting it"),
            None => "internal error".to_string(),
        };
        let err = Self::new(StatusCode::INTERNAL_SERVER_ERROR, message);
        match request_id {
            Some(id) => err.with_details(json!({ "request_id": id })),
            None => err,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: bounded(&self.message),
                details: self.details.as_ref().map(bounded_details),
            },
        }
    }
}

/// Messages longer than this are cut: some quote what the client sent (an unknown model
/// id, a permission name), and a 10 MB id must not come back as a 10 MB error.
pub const MAX_MESSAGE_CHARS: usize = 512;

fn bounded(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_string(),
    }
}

/// Details quote what was sent too (unknown permission names, ...): each string is cut
/// like a message, and an array keeps at most 32 entries.
fn bounded_details(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(bounded(s)),
        Value::Array(items) => Value::Array(items.iter().take(32).map(bounded_details).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (bounded(k), bounded_details(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let body = self.body().to_json().unwrap_or(Value::Null);
        let mut resp = Response::builder()
            .status(self.status)
            .content_type("application/json; charset=utf-8")
            .body(body.to_string());
        for (name, value) in &self.headers {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.as_response()
    }
}

impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        // Every status any route can answer: the handlers' own, and those of the layers
        // in front of them (authentication, rate limits, body parsing and limits, the
        // connection guard's timeouts and header limits).
        let statuses: [(u16, &str); 12] = [
            (400, "VALIDATION_ERROR: invalid input"),
            (401, "AUTHENTICATION_FAILED: invalid or missing credentials"),
            (403, "PERMISSION_DENIED: insufficient permissions"),
            (404, "NOT_FOUND"),
            (408, "REQUEST_TIMEOUT: the request head or body stalled"),
            (409, "CONFLICT"),
            (413, "PAYLOAD_TOO_LARGE"),
            (
                415,
                "UNSUPPORTED_MEDIA_TYPE: a request body needs its documented Content-Type",
            ),
            (429, "RATE_LIMITED: see Retry-After"),
            (
                431,
                "PAYLOAD_TOO_LARGE: request headers too large or too many",
            ),
            (500, "INTERNAL_ERROR"),
            (503, "SERVICE_UNAVAILABLE: see Retry-After"),
        ];
        MetaResponses {
            responses: statuses
                .iter()
                .map(|(status, description)| MetaResponse {
                    description,
                    status: Some(*status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: ErrorBody::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

/// Maps any error reaching the top of the stack to the error body.
pub fn error_response(err: poem::Error) -> Response {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return api.as_response();
    }
    if let Some(api) = err.downcast_ref::<super::openai::compat::OpenAiError>() {
        return api.0.as_response();
    }
    let status = err.status();
    let api = if status == StatusCode::INTERNAL_SERVER_ERROR {
        ApiError::internal(&err)
    } else {
        let message = match status.as_u16() {
            404 => "no such route".to_string(),
            405 => "method not allowed on this route".to_string(),
            401 => "missing or invalid credentials".to_string(),
            _ => err.to_string(),
        };
        let mut api = ApiError::new(status, message);
        if let Some(p) = err.downcast_ref::<poem_openapi::error::ParseParamError>() {
            api = api.with_details(json!({ "field": p.name }));
        } else if let Some(p) = err.downcast_ref::<poem_openapi::error::ParsePathError>() {
            api = api.with_details(json!({ "field": p.name }));
        }
        api
    };
    api.as_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = ApiError::not_found(format!("model `{}` not found", "é".repeat(10_000)));
        let msg = long.body().error.message;
        assert_eq!(msg.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(msg.ends_with('…'));
        assert_eq!(ApiError::not_found("short").body().error.message, "short");
        let details = ApiError::validation("x")
            .with_details(json!({"entries": vec!["a".repeat(10_000); 100], "n": 3}))
            .body()
            .error
            .details
            .unwrap();
        assert_eq!(details["entries"].as_array().unwrap().len(), 32);
        assert_eq!(
            details["entries"][0].as_str().unwrap().chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
        assert_eq!(details["n"], 3);
    }

    #[tokio::test]
    async fn internal_errors_quote_the_request_id_and_hide_the_cause() {
        let err = REQUEST_ID
            .scope("req-42".to_string(), async {
                ApiError::internal("disk /var/secret exploded")
            })
            .await;
        let body = err.body();
        assert_eq!(body.error.code, "INTERNAL_ERROR");
        assert!(body.error.message.contains("req-42"));
        assert!(!body.error.message.contains("exploded"));
        assert_eq!(body.error.details.unwrap()["request_id"], "req-42");
    }

    #[test]
    fn every_status_has_a_documented_code() {
        for (status, code) in [
            (400, "VALIDATION_ERROR"),
            (401, "AUTHENTICATION_FAILED"),
            (403, "PERMISSION_DENIED"),
            (404, "NOT_FOUND"),
            (405, "METHOD_NOT_ALLOWED"),
            (408, "REQUEST_TIMEOUT"),
            (409, "CONFLICT"),
            (413, "PAYLOAD_TOO_LARGE"),
            (415, "UNSUPPORTED_MEDIA_TYPE"),
            (429, "RATE_LIMITED"),
            (431, "PAYLOAD_TOO_LARGE"),
            (500, "INTERNAL_ERROR"),
            (503, "SERVICE_UNAVAILABLE"),
        ] {
            assert_eq!(code_for(StatusCode::from_u16(status).unwrap()), code);
        }
    }
}
