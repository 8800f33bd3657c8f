//! `GET /api/v1/cache` (the prompt-prefix KV cache of each loaded model and the response
//! cache), `GET /api/v1/cache/responses` (the cached answers), `DELETE /api/v1/cache`
//! (clear both) and `DELETE /api/v1/cache/responses/{key}`. All need `manage_cache`;
//! clearing is recorded as a `cache.cleared` event.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::auth::NoContent;
use super::error::ApiError;
use super::security::Auth;
use super::ApiTags;
use crate::auth::perm;
use crate::events::{CacheCleared, Event};
use crate::server::AppState;

#[derive(Debug, Object)]
pub struct PrefixCacheModel {
    pub model: String,
    /// Tokens the model's free slots hold for reuse.
    pub cached_tokens: u64,
    /// Requests that reused a cached prefix.
    pub hits: u64,
    /// Requests that reused nothing.
    pub misses: u64,
    /// Prompt tokens not prefilled again, over all hits.
    pub reused_tokens: u64,
    /// hits / (hits + misses); 0 before any request.
    pub hit_rate: f64,
}

#[derive(Debug, Object)]
pub struct PrefixCacheView {
    /// `[cache] prompt_prefix`.
    pub enabled: bool,
    /// Loaded models only (an unloaded model's cells are gone).
    pub models: Vec<PrefixCacheModel>,
}

#[derive(Debug, Object)]
pub struct ResponseCacheView {
    /// `[cache] responses`.
    pub enabled: bool,
    pub entries: u64,
    pub bytes: u64,
    /// `[cache] max_bytes`.
    pub max_bytes: u64,
    /// Since the server started.
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
}

#[derive(Debug, Object)]
pub struct CacheView {
    pub prefix: PrefixCacheView,
    pub responses: ResponseCacheView,
}

#[derive(Debug, Object)]
pub struct ClearedCaches {
    /// Cached answers removed.
    pub responses_removed: u64,
    /// Loaded models whose free slots' cached prefixes were dropped.
    pub prefix_models: u32,
}

#[derive(Debug, Object)]
pub struct CachedResponse {
    /// The key: SHA-256 over the model file's digest, the prompt and every sampling field.
    pub key: String,
    pub model: String,
    pub bytes: u64,
    pub stored_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct CachedResponsePage {
    pub items: Vec<CachedResponse>,
    /// Pass as `cursor` for the next page; null on the last one.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

fn rate(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    }
}

fn is_key(key: &str) -> bool {
    key.len() == 64
        && key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub struct CacheApi;

#[OpenApi(tag = "ApiTags::Cache")]
impl CacheApi {
    /// Both caches: the prompt-prefix KV cache of each loaded model (tokens held, hits,
    /// misses, reused tokens) and the response cache (entries, bytes, hits, misses, hit
    /// rate). Requires permission `manage_cache`.
    #[oai(path = "/api/v1/cache", method = "get", operation_id = "cache_get")]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ManageCache>,
    ) -> Result<Json<CacheView>, ApiError> {
        let models = state
            .engine()
            .prefix_cache()
            .into_iter()
            .map(|m| PrefixCacheModel {
                hit_rate: rate(m.hits, m.misses),
                model: m.model,
                cached_tokens: m.cached_tokens,
                hits: m.hits,
                misses: m.misses,
                reused_tokens: m.reused_tokens,
            })
            .collect();
        let r = state.responses().stats();
        Ok(Json(CacheView {
            prefix: PrefixCacheView {
                enabled: state.config().cache.prompt_prefix,
                models,
            },
            responses: ResponseCacheView {
                enabled: r.enabled,
                entries: r.entries,
                bytes: r.bytes,
                max_bytes: r.max_bytes,
                hits: r.hits,
                misses: r.misses,
                hit_rate: rate(r.hits, r.misses),
            },
        }))
    }

    /// The cached answers in key order, paged. Requires permission `manage_cache`.
    #[oai(
        path = "/api/v1/cache/responses",
        method = "get",
        operation_id = "cache_list_responses"
    )]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ManageCache>,
        cursor: Query<Option<String>>,
        /// 1 to 1000, default 100.
        limit: Query<Option<u32>>,
    ) -> Result<Json<CachedResponsePage>, ApiError> {
        let limit = super::page_limit(limit.0)?;
        if cursor.0.as_deref().is_some_and(|c| !is_key(c)) {
            return Err(ApiError::field("cursor", "cursor must be a cache key"));
        }
        let mut items = state
            .responses()
            .list(cursor.0.as_deref(), limit + 1)
            .map_err(ApiError::from)?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = more.then(|| items.last().map(|i| i.key.clone())).flatten();
        Ok(Json(CachedResponsePage {
            items: items
                .into_iter()
                .map(|i| CachedResponse {
                    key: i.key,
                    model: i.model,
                    bytes: i.bytes,
                    stored_at: i.stored_at,
                })
                .collect(),
            next_cursor,
        }))
    }

    /// Clear both caches: every cached answer, and the prefixes the free slots of every
    /// loaded model hold (slots in use keep theirs). Recorded as a `cache.cleared` event.
    /// Requires permission `manage_cache`.
    #[oai(
        path = "/api/v1/cache",
        method = "delete",
        operation_id = "cache_clear"
    )]
    async fn clear(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageCache>,
    ) -> Result<Json<ClearedCaches>, ApiError> {
        let event = Event::CacheCleared(CacheCleared {
            scope: "all".into(),
        });
        state.store().append(&auth.ctx, vec![event]).await?;
        let responses_removed = state.responses().clear().map_err(ApiError::from)?;
        let prefix_models = state.engine().prefix_cache().len() as u32;
        state.engine().clear_prefix_cache();
        Ok(Json(ClearedCaches {
            responses_removed,
            prefix_models,
        }))
    }

    /// Remove one cached answer (its key from `GET /api/v1/cache/responses`). Recorded as
    /// a `cache.cleared` event with scope `response`. Requires permission `manage_cache`.
    #[oai(
        path = "/api/v1/cache/responses/:key",
        method = "delete",
        operation_id = "cache_delete_response"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::ManageCache>,
        key: Path<String>,
    ) -> Result<NoContent, ApiError> {
        if !is_key(&key.0) || !state.responses().contains(&key.0) {
            return Err(ApiError::not_found("no cached response with this key"));
        }
        let event = Event::CacheCleared(CacheCleared {
            scope: "response".into(),
        });
        state.store().append(&auth.ctx, vec![event]).await?;
        state.responses().remove(&key.0).map_err(ApiError::from)?;
        Ok(NoContent::Done)
    }
}
