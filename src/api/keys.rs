//! `/api/v1/auth/api-keys`: create, list, show, revoke and rotate API keys.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::NoContent;
use super::error::ApiError;
use super::payload::StrictJson;
use super::security::Authenticated;
use super::ApiTags;
use crate::auth::{KeyView, NewApiKey};
use crate::server::AppState;

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    /// A subset of your own permissions.
    pub permissions: Vec<String>,
    /// 1 to 3650; default 90.
    pub expires_in_days: Option<u32>,
    /// Overrides `[limits] requests_per_minute` for this key.
    pub rate_limit_per_minute: Option<u32>,
}

#[derive(Debug, Object)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub created_at: DateTime<Utc>,
    #[oai(nullable)]
    pub expires_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub revoked_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub last_used_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub rate_limit_per_minute: Option<u32>,
}

impl From<KeyView> for ApiKey {
    fn from(k: KeyView) -> Self {
        Self {
            id: k.id,
            user_id: k.user_id,
            name: k.name,
            permissions: k.permissions,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
            rate_limit_per_minute: k.rate_limit_per_minute,
        }
    }
}

/// One page of API keys.
#[derive(Debug, Object)]
pub struct ApiKeyPage {
    pub keys: Vec<ApiKey>,
    /// Pass as `cursor` for the next page; null on the last one.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// A key with its secret, shown once.
#[derive(Debug, Object)]
pub struct CreatedApiKey {
    pub id: String,
    /// The key itself (`inf_...`); shown only in this response.
    pub key: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub created_at: DateTime<Utc>,
    #[oai(nullable)]
    pub expires_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub rate_limit_per_minute: Option<u32>,
}

fn created(view: KeyView, key: String) -> CreatedApiKey {
    CreatedApiKey {
        id: view.id,
        key,
        name: view.name,
        permissions: view.permissions,
        created_at: view.created_at,
        expires_at: view.expires_at,
        rate_limit_per_minute: view.rate_limit_per_minute,
    }
}

#[derive(ApiResponse)]
pub enum CreatedKey {
    /// The key; its secret is not shown again.
    #[oai(status = 201)]
    Created(Json<CreatedApiKey>),
}

pub struct KeysApi;

#[OpenApi(tag = "ApiTags::ApiKeys")]
impl KeysApi {
    /// Create an API key carrying a subset of your permissions.
    ///
    /// Any logged-in user (JWT) may create keys for themselves. Requires permission `manage_users` when called with an API key.
    #[oai(
        path = "/api/v1/auth/api-keys",
        method = "post",
        operation_id = "create_api_key"
    )]
    async fn create(
        &self,
        state: Data<&AppState>,
        auth: Authenticated,
        body: StrictJson<CreateApiKey>,
    ) -> Result<CreatedKey, ApiError> {
        let body = body.0;
        let (view, key) = state
            .auth()
            .create_key(
                &auth.principal,
                &auth.ctx,
                NewApiKey {
                    name: body.name,
                    permissions: body.permissions,
                    expires_in_days: body.expires_in_days,
                    rate_limit_per_minute: body.rate_limit_per_minute,
                },
            )
            .await?;
        Ok(CreatedKey::Created(Json(created(view, key))))
    }

    /// List your API keys by id, one page at a time; with `manage_users`, anyone's with
    /// `?user=<user id>`. Called with an API key: the keys it may reach (itself, and keys
    /// whose permissions are a subset of its own, unless it holds `manage_users`).
    #[oai(
        path = "/api/v1/auth/api-keys",
        method = "get",
        operation_id = "list_api_keys"
    )]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: Authenticated,
        user: Query<Option<String>>,
        /// 1 to 1000; default 100.
        limit: Query<Option<u32>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> Result<Json<ApiKeyPage>, ApiError> {
        let limit = super::page_limit(limit.0)?;
        let p = state.auth().list_keys(
            &auth.principal,
            user.0.as_deref(),
            cursor.0.as_deref(),
            limit,
        )?;
        Ok(Json(ApiKeyPage {
            keys: p.items.into_iter().map(ApiKey::from).collect(),
            next_cursor: p.next_cursor,
        }))
    }

    /// Show a key with `last_used_at`: your own (with an API key: itself, or one whose
    /// permissions are a subset of its own), any key with `manage_users`.
    #[oai(
        path = "/api/v1/auth/api-keys/:id",
        method = "get",
        operation_id = "get_api_key"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Json<ApiKey>, ApiError> {
        Ok(Json(state.auth().get_key(&auth.principal, &id)?.into()))
    }

    /// Revoke a key at once. Your own keys (with an API key: itself, or one whose
    /// permissions are a subset of its own); any key with `manage_users`.
    #[oai(
        path = "/api/v1/auth/api-keys/:id",
        method = "delete",
        operation_id = "revoke_api_key"
    )]
    async fn revoke(
        &self,
        state: Data<&AppState>,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<NoContent, ApiError> {
        state
            .auth()
            .revoke_key(&auth.principal, &auth.ctx, &id)
            .await?;
        Ok(NoContent::Done)
    }

    /// A new secret for the same id, name and permissions; the old secret stops working.
    /// Your own keys with a JWT; with an API key, itself or a key whose permissions are a
    /// subset of its own; another user's with `manage_users` and a subset of its
    /// permissions (rotation hands over the secret).
    #[oai(
        path = "/api/v1/auth/api-keys/:id/rotate",
        method = "post",
        operation_id = "rotate_api_key"
    )]
    async fn rotate(
        &self,
        state: Data<&AppState>,
        auth: Authenticated,
        id: Path<String>,
    ) -> Result<Json<CreatedApiKey>, ApiError> {
        let (view, key) = state
            .auth()
            .rotate_key(&auth.principal, &auth.ctx, &id)
            .await?;
        Ok(Json(created(view, key)))
    }
}
