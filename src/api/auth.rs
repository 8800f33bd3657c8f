//! `/api/v1/auth`: login, logout, the caller's identity, changing one's own password.

use chrono::SecondsFormat;
use poem::web::Data;
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::error::ApiError;
use super::payload::StrictJson;
use super::security::{event_context, Authenticated};
use super::users::UserJson;
use super::ApiTags;
use crate::auth::AuthError;
use crate::server::AppState;

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Object)]
pub struct LoginResponse {
    /// HS256 JWT; send it as `Authorization: Bearer <token>`.
    pub token: String,
    /// RFC 3339, UTC, e.g. `2024-01-02T00:00:00Z`.
    pub expires_at: String,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct ChangePassword {
    pub old_password: String,
    /// At least 12 characters.
    pub new_password: String,
}

#[derive(ApiResponse)]
pub enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

pub struct AuthApi;

#[OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Log in with username and password; returns a JWT. Failed logins are limited per
    /// (username, client IP) and per client IP; successful ones never count. No
    /// authentication.
    #[oai(path = "/api/v1/auth/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        state: Data<&AppState>,
        req: &Request,
        body: StrictJson<LoginRequest>,
    ) -> Result<Json<LoginResponse>, ApiError> {
        let ctx = event_context(req, None);
        let ip = ctx.client_ip.clone().unwrap_or_default();
        if let Some(retry) = state.limits().login_blocked(&ip, &body.username) {
            crate::metrics::rate_limited(crate::metrics::RateLimit::Login);
            return Err(ApiError::rate_limited(retry));
        }
        let result = state
            .auth()
            .login(&ctx, &body.username, &body.password)
            .await;
        if matches!(result, Err(AuthError::Unauthenticated(_))) {
            state.limits().login_failed(&ip, &body.username);
        }
        let (token, expires_at) = result?;
        Ok(Json(LoginResponse {
            token,
            expires_at: expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }))
    }

    /// Revoke the JWT this request carries. Any authenticated user.
    #[oai(path = "/api/v1/auth/logout", method = "post", operation_id = "logout")]
    async fn logout(
        &self,
        state: Data<&AppState>,
        auth: Authenticated,
    ) -> Result<NoContent, ApiError> {
        state.auth().logout(&auth.principal, &auth.ctx).await?;
        Ok(NoContent::Done)
    }

    /// The caller's identity and the permissions this credential carries. Any authenticated
    /// user.
    #[oai(path = "/api/v1/auth/me", method = "get", operation_id = "me")]
    async fn me(&self, state: Data<&AppState>, auth: Authenticated) -> Result<UserJson, ApiError> {
        let body = state
            .auth()
            .me_rendered(&auth.principal, |view| UserJson::render(view.into()))?;
        Ok(UserJson(body))
    }

    /// Change your own password, proving the old one. Any authenticated user.
    #[oai(
        path = "/api/v1/auth/password",
        method = "post",
        operation_id = "change_password"
    )]
    async fn change_password(
        &self,
        state: Data<&AppState>,
        auth: Authenticated,
        body: StrictJson<ChangePassword>,
    ) -> Result<NoContent, ApiError> {
        state
            .auth()
            .change_own_password(
                &auth.principal,
                &auth.ctx,
                &body.old_password,
                &body.new_password,
            )
            .await?;
        Ok(NoContent::Done)
    }
}
