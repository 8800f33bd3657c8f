//! `GET /api/v1/config` (every effective setting with its source) and
//! `PATCH /api/v1/config` (the settings that change live; recorded as `config.changed`
//! events and replayed over the file and environment at start-up). Both need
//! `write_config`.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use serde_json::{json, Value};

use super::error::ApiError;
use super::payload::StrictJson;
use super::security::Auth;
use super::ApiTags;
use crate::auth::perm;
use crate::config::live::{FieldError, Setting};
use crate::config::Source;
use crate::events::{ConfigChanged, Event};
use crate::server::AppState;

/// Where a setting's value comes from: `default`, `file`, `env`, `cli` (a command-line
/// flag), or `runtime` (a `PATCH /api/v1/config`, kept over restarts).
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum SettingSource {
    Default,
    File,
    Env,
    Cli,
    Runtime,
}

impl From<Source> for SettingSource {
    fn from(s: Source) -> Self {
        match s {
            Source::Default => SettingSource::Default,
            Source::File => SettingSource::File,
            Source::Env => SettingSource::Env,
            Source::Cli => SettingSource::Cli,
            Source::Runtime => SettingSource::Runtime,
        }
    }
}

#[derive(Debug, Object)]
pub struct SettingView {
    /// Dotted key, as in the config file's `[section] key` (`limits.requests_per_minute`).
    pub key: String,
    /// The effective value; `"***"` for a secret that is set.
    pub value: Value,
    // Documented on `SettingSource`: a field doc here would wrap the enum's `$ref` in an
    // `allOf`, which openapi-python-client cannot take for a non-object.
    pub source: SettingSource,
    /// Whether `PATCH /api/v1/config` may change it; the others need a restart.
    pub live: bool,
}

#[derive(Debug, Object)]
pub struct ConfigView {
    /// Every setting, by key.
    pub settings: Vec<SettingView>,
}

#[derive(Debug, Object)]
pub struct ConfigPatched {
    /// The keys this patch changed (or set back to their file/environment value).
    pub changed: Vec<String>,
    /// Every setting after the patch.
    pub settings: Vec<SettingView>,
}

fn views(settings: Vec<Setting>) -> Vec<SettingView> {
    settings
        .into_iter()
        .map(|s| SettingView {
            key: s.key,
            value: s.value,
            source: s.source.into(),
            live: s.live,
        })
        .collect()
}

/// 400 naming every refused key: `details.fields = [{"field", "message"}]`.
fn refused(errors: Vec<FieldError>) -> ApiError {
    let message = errors
        .iter()
        .map(|e| {
            if e.field.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.field, e.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let fields: Vec<Value> = errors
        .iter()
        .map(|e| json!({"field": e.field, "message": e.message}))
        .collect();
    ApiError::validation(format!("nothing was changed: {message}"))
        .with_details(json!({ "fields": fields }))
}

pub struct ConfigApi;

#[OpenApi(tag = "ApiTags::Config")]
impl ConfigApi {
    /// Every effective setting with its source (`default`, `file`, `env`, `runtime`) and
    /// whether it can change live; secrets are shown as `"***"`. Requires permission
    /// `write_config`.
    #[oai(path = "/api/v1/config", method = "get", operation_id = "config_get")]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: Auth<perm::WriteConfig>,
    ) -> Result<Json<ConfigView>, ApiError> {
        Ok(Json(ConfigView {
            settings: views(state.live_config().settings()),
        }))
    }

    /// Change settings without a restart: a JSON merge patch such as
    /// `{"limits": {"requests_per_minute": 30}}` (dotted top-level keys such as
    /// `"limits.requests_per_minute"` work too; `null` puts the file/environment value
    /// back). The patch is checked as a whole: a 400 names every unknown, non-live or
    /// invalid key, and nothing is applied. Each change is recorded as a `config.changed`
    /// event (key, old and new value), applies from the next request on, and is kept over
    /// restarts. Requires permission `write_config`.
    #[oai(
        path = "/api/v1/config",
        method = "patch",
        operation_id = "config_patch"
    )]
    async fn patch(
        &self,
        state: Data<&AppState>,
        auth: Auth<perm::WriteConfig>,
        body: StrictJson<Value>,
    ) -> Result<Json<ConfigPatched>, ApiError> {
        let live = state.live_config();
        let _one_at_a_time = live.update.lock().await;
        let plan = live.plan(&body.0).map_err(refused)?;
        let changed: Vec<String> = plan.changes.iter().map(|c| c.key.clone()).collect();
        let events = plan
            .changes
            .iter()
            .map(|c| {
                Event::ConfigChanged(ConfigChanged {
                    key: c.key.clone(),
                    old: c.old.clone(),
                    value: c.value.clone(),
                })
            })
            .collect();
        state.store().append(&auth.ctx, events).await?;
        let config = live.commit(plan);
        state.apply_live(&config);
        tracing::info!(keys = ?changed, "configuration changed");
        Ok(Json(ConfigPatched {
            changed,
            settings: views(live.settings()),
        }))
    }
}
