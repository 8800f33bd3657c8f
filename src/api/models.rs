//! `/api/v1/models`: list, show, upload (raw GGUF body), update and delete models.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use poem::web::Data;
use poem::Body;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::{json, Value};

use super::auth::NoContent;
use super::error::ApiError;
use super::payload::StrictJson;
use super::security::Auth;
use super::ApiTags;
use crate::auth::perm;
use crate::inference::catalog::{metadata_json, CatalogError, ModelPatch, ModelView};
use crate::inference::runner::SamplingOverrides;
use crate::inference::{BusyReason, EngineError, SamplingParams};
use crate::paging::page;
use crate::server::AppState;

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ContextOverflow {
                prompt_tokens,
                max_prompt_tokens,
            } => ApiError::validation(format!(
                "prompt is {prompt_tokens} tokens; at most {max_prompt_tokens} fit in the context"
            ))
            .with_details(json!({
                "field": "prompt",
                "prompt_tokens": prompt_tokens,
                "max_prompt_tokens": max_prompt_tokens,
            })),
            EngineError::ModelNotFound(m) => ApiError::not_found(format!("model {m} not found")),
            EngineError::InvalidModel(why) => {
                ApiError::internal(format!("invalid model file: {why}"))
            }
            EngineError::InvalidParams(why) => ApiError::validation(why),
            EngineError::Overloaded => {
                ApiError::unavailable("all loaded models are busy; retry shortly", 2)
            }
            EngineError::Busy(reason) => {
                let details = match reason {
                    BusyReason::WaitingListFull { max_waiting } => {
                        json!({"reason": "waiting_list_full", "max_waiting": max_waiting})
                    }
                    BusyReason::WaitedTooLong { max_wait_secs } => {
                        json!({"reason": "wait_timeout", "max_wait_secs": max_wait_secs})
                    }
                };
                ApiError::unavailable(format!("model busy: {reason}; retry shortly"), 2)
                    .with_details(details)
            }
            e @ (EngineError::Load(_) | EngineError::Internal(_)) => ApiError::internal(e),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound(m) => ApiError::not_found(format!("model {m:?} not found")),
            CatalogError::Invalid { field, message } => ApiError::field(field, message),
            CatalogError::Conflict(m) => ApiError::conflict(m),
            CatalogError::TooLarge(limit) => ApiError::too_large(limit),
            CatalogError::Store(e) => e.into(),
            CatalogError::Engine(e) => e.into(),
            CatalogError::Io(m) => ApiError::internal(m),
        }
    }
}

/// Default sampling parameters; absent fields take the server defaults.
#[derive(Debug, Clone, Default, Object)]
#[oai(deny_unknown_fields)]
pub struct Sampling {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u32>,
    pub stop: Option<Vec<String>>,
}

impl From<Sampling> for SamplingOverrides {
    fn from(s: Sampling) -> Self {
        SamplingOverrides {
            max_tokens: s.max_tokens,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            seed: s.seed,
            stop: s.stop,
        }
    }
}

#[derive(Debug, Object)]
pub struct Model {
    /// The file stem, e.g. `gemma-3-270m-q4_k_m`.
    pub id: String,
    pub aliases: Vec<String>,
    pub file_name: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// architecture, name, parameter_count, context_length, quantization, has_chat_template.
    pub metadata: Value,
    /// Default sampling parameters for requests on this model.
    pub defaults: Value,
    pub enabled: bool,
    pub loaded: bool,
    pub active_requests: u64,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ModelView> for Model {
    fn from(m: ModelView) -> Self {
        Self {
            metadata: metadata_json(&m.file),
            id: m.record.id,
            aliases: m.record.aliases,
            file_name: m.record.file_name,
            size_bytes: m.record.size_bytes,
            sha256: m.record.sha256,
            defaults: m.record.defaults,
            enabled: m.record.enabled,
            loaded: m.loaded,
            active_requests: m.active_requests as u64,
            registered_at: m.record.registered_at,
            updated_at: m.record.updated_at,
        }
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct UpdateModel {
    pub aliases: Option<Vec<String>>,
    pub defaults: Option<Sampling>,
    pub enabled: Option<bool>,
}

#[derive(ApiResponse)]
pub enum Uploaded {
    /// Registered.
    #[oai(status = 201)]
    Created(Json<Model>),
}

/// One page of models.
#[derive(Debug, Object)]
pub struct ModelPage {
    pub models: Vec<Model>,
    /// Pass as `cursor` for the next page; null on the last one.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

pub struct ModelsApi;

#[OpenApi(tag = "ApiTags::Models")]
impl ModelsApi {
    /// List models by id, one page at a time. Requires permission `read_models`.
    #[oai(path = "/api/v1/models", method = "get", operation_id = "list_models")]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ReadModels>,
        /// 1 to 1000; default 100.
        limit: Query<Option<u32>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> Result<Json<ModelPage>, ApiError> {
        let limit = super::page_limit(limit.0)?;
        let models = state.catalog().list()?;
        let p = page(models, |m| m.record.id.as_str(), cursor.0.as_deref(), limit);
        Ok(Json(ModelPage {
            models: p.items.into_iter().map(Model::from).collect(),
            next_cursor: p.next_cursor,
        }))
    }

    /// Show a model by id or alias. Requires permission `read_models`.
    #[oai(
        path = "/api/v1/models/:id",
        method = "get",
        operation_id = "get_model"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::ReadModels>,
        id: Path<String>,
    ) -> Result<Json<Model>, ApiError> {
        Ok(Json(state.catalog().resolve(&id)?.into()))
    }

    /// Upload a GGUF file as the raw request body (`Content-Type: application/octet-stream`),
    /// streamed to disk, never held in memory; limited by `[models] max_upload_bytes`.
    /// Requires permission `write_models`.
    #[oai(
        path = "/api/v1/models",
        method = "post",
        operation_id = "upload_model"
    )]
    async fn upload(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::WriteModels>,
        /// The model id to register the file under.
        name: Query<String>,
        body: Binary<Body>,
    ) -> Result<Uploaded, ApiError> {
        let stream = body.0.into_bytes_stream().boxed();
        let model = state
            .catalog()
            .upload(&auth.grant, &auth.ctx, &name, stream)
            .await?;
        Ok(Uploaded::Created(Json(model.into())))
    }

    /// Set aliases, default sampling parameters or the enabled flag. Requires permission
    /// `write_models`.
    #[oai(
        path = "/api/v1/models/:id",
        method = "patch",
        operation_id = "update_model"
    )]
    async fn update(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::WriteModels>,
        id: Path<String>,
        body: StrictJson<UpdateModel>,
    ) -> Result<Json<Model>, ApiError> {
        let b = body.0;
        let patch = ModelPatch {
            aliases: b.aliases,
            defaults: b
                .defaults
                .map(|d| SamplingOverrides::from(d).apply(SamplingParams::default())),
            enabled: b.enabled,
        };
        let model = state
            .catalog()
            .update(&auth.grant, &auth.ctx, &id, patch)
            .await?;
        Ok(Json(model.into()))
    }

    /// Delete a model and its file: 409 while requests run on it unless `force=true`,
    /// which cancels them. Requires permission `delete_models`.
    #[oai(
        path = "/api/v1/models/:id",
        method = "delete",
        operation_id = "delete_model"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::DeleteModels>,
        id: Path<String>,
        force: Query<Option<bool>>,
    ) -> Result<NoContent, ApiError> {
        state
            .catalog()
            .delete(&auth.grant, &auth.ctx, &id, force.0.unwrap_or(false))
            .await?;
        Ok(NoContent::Done)
    }
}
