//! Request-scoped middleware: request ids, the access log with the HTTP metrics, and the
//! streamed body limit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::StreamExt;
use poem::http::{HeaderValue, Method};
use poem::{Body, Endpoint, IntoResponse, Request, Response, Result};

use super::error::{error_response, ApiError, REQUEST_ID};
use crate::auth::Principal;

/// What the access log reports beyond the request line: the client's IP, formatted once
/// per request, and the principal that authentication filled in.
#[derive(Clone)]
pub struct AccessInfo(Arc<AccessData>);

struct AccessData {
    ip: String,
    principal: OnceLock<Principal>,
}

impl AccessInfo {
    fn new(ip: String) -> Self {
        Self(Arc::new(AccessData {
            ip,
            principal: OnceLock::new(),
        }))
    }

    /// The client's IP without the port.
    pub fn ip(&self) -> &str {
        &self.0.ip
    }

    pub fn set_principal(&self, principal: &Principal) {
        let _ = self.0.principal.set(principal.clone());
    }

    fn user_id(&self) -> &str {
        self.0.principal.get().map_or("-", Principal::user_id)
    }
}

/// A request id we keep: 1 to 128 characters of `[A-Za-z0-9._:-]`.
fn valid_request_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// The client's IP without the port (as [`observe`] noted it).
pub fn client_ip(req: &Request) -> String {
    match req.extensions().get::<AccessInfo>() {
        Some(info) => info.ip().to_string(),
        None => format_ip(req),
    }
}

fn format_ip(req: &Request) -> String {
    req.remote_addr()
        .as_socket_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "-".to_string())
}

/// The request's [`AccessInfo`] (one made now when [`observe`] did not run).
pub fn access_info(req: &Request) -> AccessInfo {
    req.extensions()
        .get::<AccessInfo>()
        .cloned()
        .unwrap_or_else(|| AccessInfo::new(format_ip(req)))
}

/// Gives each request an id (keeping a valid incoming `X-Request-Id`, refusing an invalid
/// one), writes one access-log record per request, and turns every error into the body.
pub async fn observe<E: Endpoint>(ep: Arc<E>, mut req: Request) -> Result<Response> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let info = AccessInfo::new(format_ip(&req));
    req.extensions_mut().insert(info.clone());

    let incoming = req
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().map(str::to_string));
    let (request_id, rejected) = match incoming {
        Some(Ok(id)) if valid_request_id(&id) => (id, false),
        Some(_) => (uuid::Uuid::now_v7().to_string(), true),
        None => (uuid::Uuid::now_v7().to_string(), false),
    };
    req.extensions_mut().insert(RequestId(request_id.clone()));

    let mut resp = REQUEST_ID
        .scope(request_id.clone(), async move {
            if rejected {
                return ApiError::field(
                    "X-Request-Id",
                    "X-Request-Id must be 1 to 128 characters of letters, digits, '.', '_', ':' or '-'",
                )
                .into_response();
            }
            match ep.call(req).await {
                Ok(r) => r.into_response(),
                Err(e) => error_response(e),
            }
        })
        .await;

    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let elapsed = start.elapsed();
    crate::metrics::http_request(
        super::routes::method_label(&method),
        super::routes::templates().resolve(&path),
        resp.status().as_u16(),
        elapsed,
    );
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    tracing::info!(
        target: "inferno::access",
        request_id = %request_id,
        client_ip = %info.ip(),
        user_id = %info.user_id(),
        method = %method,
        route = %path,
        status = resp.status().as_u16(),
        duration_ms = format!("{elapsed_ms:.2}"),
        "request"
    );
    Ok(resp)
}

/// The id of the request being served, for events and error bodies.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Limits request bodies by the bytes actually streamed, so a chunked body without
/// Content-Length is limited too; a declared Content-Length over the limit is refused at once.
/// Model uploads get their own, larger limit.
#[derive(Clone, Copy)]
pub struct BodyLimits {
    pub default: u64,
    pub upload: u64,
    /// Longest wait for the next chunk of the body.
    pub chunk_timeout: std::time::Duration,
}

impl BodyLimits {
    fn for_request(&self, req: &Request) -> u64 {
        if req.method() == Method::POST && req.uri().path() == "/api/v1/models" {
            self.upload
        } else {
            self.default
        }
    }
}

pub async fn limit_body<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    limits: BodyLimits,
) -> Result<Response> {
    let limit = limits.for_request(&req);
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Ok(ApiError::too_large(limit).into_response());
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let flag = exceeded.clone();
    let timeout = limits.chunk_timeout;
    let stalled = Arc::new(AtomicBool::new(false));
    let stalled_flag = stalled.clone();
    let chunks = Box::pin(req.take_body().into_bytes_stream());
    let chunks = futures::stream::unfold(Some(chunks), move |chunks| {
        let stalled = stalled_flag.clone();
        async move {
            let mut chunks = chunks?;
            match tokio::time::timeout(timeout, chunks.next()).await {
                Ok(Some(item)) => Some((item, Some(chunks))),
                Ok(None) => None,
                Err(_) => {
                    stalled.store(true, Ordering::Relaxed);
                    Some((Err(std::io::Error::other("request body stalled")), None))
                }
            }
        }
    });
    let body = chunks.map(move |chunk| {
        let chunk = chunk?;
        let total = seen.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if total > limit {
            flag.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("request body too large"));
        }
        Ok(chunk)
    });
    req.set_body(Body::from_bytes_stream(body));
    let resp = match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) => error_response(e),
    };
    if exceeded.load(Ordering::Relaxed) {
        return Ok(ApiError::too_large(limit).into_response());
    }
    if stalled.load(Ordering::Relaxed) {
        return Ok(ApiError::new(
            poem::http::StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body stalled: no data for {} s",
                timeout.as_secs()
            ),
        )
        .into_response());
    }
    Ok(resp)
}
