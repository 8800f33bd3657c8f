//! Authentication middleware, rate-limit headers, and the extractors that make a handler
//! unreachable without its permission check.
//!
//! A handler declares its permission once, in its signature: `auth: Auth<perm::ReadModels>`.
//! The extractor yields a [`Granted`] capability that domain calls require.

use std::sync::Arc;

use poem::http::header::HeaderName;
use poem::http::HeaderMap;
use poem::{Endpoint, IntoResponse, Request, RequestBody, Response, Result};
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

use super::error::{error_response, ApiError};
use super::middleware::{access_info, client_ip, RequestId};
use crate::auth::{AuthError, Credential, Granted, Perm, Principal};
use crate::events::{Actor, EventContext, EventError};
use crate::metrics::{self, Credential as CredentialLabel, RateLimit};
use crate::ratelimit::RateStatus;
use crate::server::AppState;

pub const BEARER: &str = "bearerAuth";
pub const API_KEY: &str = "apiKeyAuth";

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        match e {
            EventError::Unavailable(msg) => {
                tracing::error!(error = %msg, "event store unavailable");
                // Which store, never why (the detail is in the log).
                let shown = if msg.contains(crate::events::shared::UNAVAILABLE) {
                    "the shared event log (PostgreSQL) is unavailable; try again later"
                } else {
                    "storage is unavailable; try again later"
                };
                ApiError::unavailable(shown, 5)
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(msg) => ApiError::unauthenticated(msg),
            AuthError::Forbidden(p) => ApiError::forbidden(p.as_str()),
            AuthError::Beyond { required, message } => {
                ApiError::forbidden(required.as_str()).with_message(message)
            }
            AuthError::Invalid {
                field,
                message,
                entries,
            } => {
                let mut details = serde_json::json!({ "field": field });
                if !entries.is_empty() {
                    details["entries"] = serde_json::json!(entries);
                }
                ApiError::validation(message).with_details(details)
            }
            AuthError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            AuthError::Conflict(msg) => ApiError::conflict(msg),
            AuthError::Store(e) => e.into(),
            AuthError::Internal(msg) => ApiError::internal(msg),
        }
    }
}

/// The event context of a request: who, which request, from where.
pub fn event_context(req: &Request, principal: Option<&Principal>) -> EventContext {
    EventContext {
        actor: principal
            .map(Principal::actor)
            .unwrap_or_else(Actor::system),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        client_ip: Some(client_ip(req)),
    }
}

/// Reads `X-API-Key`, or `Authorization: Bearer <jwt | inf_ key>`.
fn credential(headers: &HeaderMap) -> Result<Option<Credential>, ApiError> {
    if let Some(v) = headers.get("x-api-key") {
        let key = v
            .to_str()
            .map_err(|_| ApiError::unauthenticated("Invalid API key"))?;
        return Ok(Some(Credential::ApiKey(key.trim().to_string())));
    }
    let Some(v) = headers.get("authorization") else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
    let mut parts = v.splitn(2, ' ');
    let scheme = parts.next().unwrap_or_default();
    let token = parts.next().unwrap_or_default().trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::unauthenticated(
            "Authorization must be `Bearer <token>`",
        ));
    }
    if token.starts_with(crate::auth::credentials::KEY_PREFIX) {
        Ok(Some(Credential::ApiKey(token.to_string())))
    } else {
        Ok(Some(Credential::Jwt(token.to_string())))
    }
}

const RATE_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const RATE_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RATE_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

fn add_rate_headers(resp: &mut Response, s: RateStatus) {
    let h = resp.headers_mut();
    h.insert(RATE_LIMIT, s.limit.into());
    h.insert(RATE_REMAINING, s.remaining.into());
    h.insert(RATE_RESET, s.reset.into());
}

/// Authenticates requests that carry a credential and counts them against the principal's
/// rate limit; every authenticated response, errors included, carries the limit headers.
/// Requests without a credential pass through (the route decides whether it needs one).
pub async fn authenticate<E: Endpoint>(ep: Arc<E>, mut req: Request) -> Result<Response> {
    let Some(state) = req.data::<AppState>().cloned() else {
        return ep.call(req).await.map(IntoResponse::into_response);
    };
    let cred = match credential(req.headers()) {
        Ok(Some(c)) => c,
        Ok(None) => return ep.call(req).await.map(IntoResponse::into_response),
        Err(e) => {
            metrics::auth_failed(CredentialLabel::Header, "malformed");
            return Ok(e.into_response());
        }
    };
    let access = access_info(&req);
    let ip = access.ip();
    // Only failures need the event context.
    let ctx = || event_context(&req, None);
    if let Some(retry) = state.limits().auth_blocked(ip) {
        // Over its failure budget: refused unchecked, and counted in aggregate.
        if let Err(e) = state
            .auth()
            .note_throttled(&ctx(), matches!(cred, Credential::Jwt(_)))
            .await
        {
            return Ok(ApiError::from(e).into_response());
        }
        metrics::rate_limited(RateLimit::FailedAuth);
        return Ok(ApiError::rate_limited(retry).into_response());
    }
    let principal = match state.auth().authenticate_with(cred, ctx).await {
        Ok(p) => p,
        Err(e) => {
            if matches!(e, AuthError::Unauthenticated(_)) {
                state.limits().auth_failed(ip);
            }
            return Ok(ApiError::from(e).into_response());
        }
    };
    access.set_principal(&principal);
    let status = match state
        .limits()
        .check(principal.rate_key(), principal.rate_limit_per_minute())
    {
        Ok(s) => s,
        Err(limited) => {
            metrics::rate_limited(RateLimit::Principal);
            let mut resp = ApiError::rate_limited(limited.retry_after_secs).into_response();
            add_rate_headers(&mut resp, limited.status);
            return Ok(resp);
        }
    };
    req.extensions_mut().insert(principal);
    let mut resp = match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) => error_response(e),
    };
    add_rate_headers(&mut resp, status);
    Ok(resp)
}

fn register_schemes(registry: &mut Registry) {
    registry.create_security_scheme(
        BEARER,
        MetaSecurityScheme {
            ty: "http",
            description: Some("A JWT from POST /api/v1/auth/login, or an `inf_` API key"),
            name: None,
            key_in: None,
            scheme: Some("bearer"),
            bearer_format: Some("JWT"),
            flows: None,
            openid_connect_url: None,
        },
    );
    registry.create_security_scheme(
        API_KEY,
        MetaSecurityScheme {
            ty: "apiKey",
            description: Some("An API key from POST /api/v1/auth/api-keys"),
            name: Some("X-API-Key"),
            key_in: Some("header"),
            scheme: None,
            bearer_format: None,
            flows: None,
            openid_connect_url: None,
        },
    );
}

fn principal_of(req: &Request) -> Result<Principal, ApiError> {
    req.extensions().get::<Principal>().cloned().ok_or_else(|| {
        metrics::auth_failed(CredentialLabel::None, "missing");
        ApiError::unauthenticated(
            "missing credentials: send `Authorization: Bearer <token>` or `X-API-Key: <key>`",
        )
    })
}

/// Any authenticated principal (no particular permission).
pub struct Authenticated {
    pub principal: Principal,
    pub ctx: EventContext,
}

impl<'a> ApiExtractor<'a> for Authenticated {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        register_schemes(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![BEARER, API_KEY]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut RequestBody,
        _opts: ExtractParamOptions<Self::ParamType>,
    ) -> Result<Self> {
        let principal = principal_of(req)?;
        let ctx = event_context(req, Some(&principal));
        Ok(Authenticated { principal, ctx })
    }
}

/// A principal holding permission `P`; the only way to obtain a [`Granted<P>`] in the API.
pub struct Auth<P: Perm> {
    pub grant: Granted<P>,
    pub ctx: EventContext,
}

impl<P: Perm> Auth<P> {
    pub fn principal(&self) -> &Principal {
        self.grant.principal()
    }
}

impl<'a, P: Perm> ApiExtractor<'a> for Auth<P> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        register_schemes(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![BEARER, API_KEY]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut RequestBody,
        _opts: ExtractParamOptions<Self::ParamType>,
    ) -> Result<Self> {
        let principal = principal_of(req)?;
        let ctx = event_context(req, Some(&principal));
        match principal.grant::<P>() {
            Ok(grant) => Ok(Auth { grant, ctx }),
            Err(denied) => {
                metrics::permission_denied(denied.0.as_str());
                if let Some(state) = req.data::<AppState>() {
                    state
                        .auth()
                        .record_denied(&principal, &ctx, denied.0, req.uri().path())
                        .await
                        .map_err(ApiError::from)?;
                }
                Err(ApiError::forbidden(denied.0.as_str()).into())
            }
        }
    }
}
