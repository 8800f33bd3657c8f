//! The model catalog: GGUF files on disk joined with the `models` projection (aliases,
//! default sampling parameters, enabled flag). Registration, updates and deletion are events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{
    inspect_with_digest, is_gguf, remember_digest, scan_dir, Engine, EngineError, ModelFile,
    ModelSpec, SamplingParams,
};
use crate::auth::{perm, Granted};
use crate::events::projections::models::{self, ModelRecord};
use crate::events::{self as ev, Event, EventContext, EventError, EventStore};

/// Why a catalog operation failed; each variant says how it reaches the client.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// 404 NOT_FOUND.
    #[error("model {0:?} not found")]
    NotFound(String),
    /// 400 VALIDATION_ERROR naming the field.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// 409 CONFLICT.
    #[error("{0}")]
    Conflict(String),
    /// 413 PAYLOAD_TOO_LARGE.
    #[error("upload exceeds {0} bytes")]
    TooLarge(u64),
    /// From the event store.
    #[error(transparent)]
    Store(#[from] EventError),
    /// From the engine or the GGUF reader.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// 500.
    #[error("{0}")]
    Io(String),
}

fn invalid(field: &'static str, message: impl Into<String>) -> CatalogError {
    CatalogError::Invalid {
        field,
        message: message.into(),
    }
}

/// A model as clients see it: its file and its settings.
#[derive(Debug, Clone)]
pub struct ModelView {
    pub record: ModelRecord,
    pub file: ModelFile,
    /// Requests queued or running on it now.
    pub active_requests: usize,
    pub loaded: bool,
}

impl ModelView {
    /// What the engine runs: the id and the real file (symlinks resolved, so one file
    /// linked under the same id from several folders is one loaded model).
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            id: self.file.id.clone(),
            path: std::fs::canonicalize(&self.file.path).unwrap_or_else(|_| self.file.path.clone()),
        }
    }

    /// The model's default sampling parameters (set with PATCH), over the server defaults.
    pub fn defaults(&self) -> SamplingParams {
        serde_json::from_value(self.record.defaults.clone()).unwrap_or_default()
    }
}

/// A change to a model's settings; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ModelPatch {
    pub aliases: Option<Vec<String>>,
    pub defaults: Option<SamplingParams>,
    pub enabled: Option<bool>,
}

pub struct Catalog {
    store: EventStore,
    engine: Arc<dyn Engine>,
    dir: PathBuf,
    hash_cache: PathBuf,
    max_upload_bytes: u64,
    files: RwLock<HashMap<String, ModelFile>>,
    /// Serialises uploads, updates and deletes.
    write_lock: tokio::sync::Mutex<()>,
}

/// A model name: 1 to 100 of `[A-Za-z0-9._-]`, not starting with '.'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Catalog {
    /// Scans the models folder and records every new or changed file as `model.registered`.
    pub async fn open(
        store: EventStore,
        engine: Arc<dyn Engine>,
        dir: &Path,
        data_dir: &Path,
        max_upload_bytes: u64,
    ) -> Result<Self, CatalogError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CatalogError::Io(format!("creating {}: {e}", dir.display())))?;
        let catalog = Self {
            store,
            engine,
            dir: dir.to_path_buf(),
            hash_cache: data_dir.join("model-hashes.json"),
            max_upload_bytes,
            files: RwLock::new(HashMap::new()),
            write_lock: tokio::sync::Mutex::new(()),
        };
        catalog.rescan().await?;
        Ok(catalog)
    }

    /// Re-reads the folder, registering new or changed files.
    pub async fn rescan(&self) -> Result<(), CatalogError> {
        let (dir, cache) = (self.dir.clone(), self.hash_cache.clone());
        let found = tokio::task::spawn_blocking(move || scan_dir(&dir, &cache))
            .await
            .map_err(|e| CatalogError::Io(e.to_string()))??;
        let mut events = Vec::new();
        for f in &found {
            let known = models::get(&self.store, &f.id)?;
            if known.as_ref().map(|m| m.sha256.as_str()) != Some(f.sha256.as_str()) {
                events.push(registered(f));
            }
        }
        if !events.is_empty() && self.store.is_read_only() {
            tracing::warn!(
                files = events.len(),
                "new or changed model files are not recorded: the event log is read-only"
            );
        } else if !events.is_empty() {
            self.store.append(&EventContext::system(), events).await?;
        }
        let mut files = self.files.write().expect("catalog lock");
        files.clear();
        for f in found {
            files.insert(f.id.clone(), f);
        }
        Ok(())
    }

    fn view(&self, record: ModelRecord, file: ModelFile) -> ModelView {
        let loaded = self.engine.stats().loaded_models.contains(&file.id);
        ModelView {
            active_requests: self.engine.active_requests(&file.id),
            loaded,
            record,
            file,
        }
    }

    /// Every model whose file is present.
    pub fn list(&self) -> Result<Vec<ModelView>, CatalogError> {
        let files = self.files.read().expect("catalog lock").clone();
        let mut out = Vec::new();
        for record in models::list(&self.store)? {
            if let Some(file) = files.get(&record.id) {
                out.push(self.view(record, file.clone()));
            }
        }
        out.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        Ok(out)
    }

    /// A model by id or alias.
    pub fn resolve(&self, id_or_alias: &str) -> Result<ModelView, CatalogError> {
        let record = match models::get(&self.store, id_or_alias)? {
            Some(r) => Some(r),
            None => models::by_alias(&self.store, id_or_alias)?,
        };
        let record = record.ok_or_else(|| CatalogError::NotFound(id_or_alias.to_string()))?;
        let file = self
            .files
            .read()
            .expect("catalog lock")
            .get(&record.id)
            .cloned()
            .ok_or_else(|| CatalogError::NotFound(id_or_alias.to_string()))?;
        Ok(self.view(record, file))
    }

    /// Streams an upload to a temporary file, checks it is GGUF, renames it into place and
    /// registers it. Nothing is left behind on any failure.
    pub async fn upload<S>(
        &self,
        _cap: &Granted<perm::WriteModels>,
        ctx: &EventContext,
        name: &str,
        body: S,
    ) -> Result<ModelView, CatalogError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        if !valid_name(name) {
            return Err(invalid(
                "name",
                "name must be 1 to 100 characters of letters, digits, '.', '_' or '-', not starting with '.'",
            ));
        }
        let _guard = self.write_lock.lock().await;
        let target = self.dir.join(format!("{name}.gguf"));
        if target.exists() || self.resolve(name).is_ok() {
            return Err(CatalogError::Conflict(format!("model {name:?} exists")));
        }
        let temp = self
            .dir
            .join(format!(".upload-{}.partial", uuid::Uuid::new_v4().simple()));
        let sha256 = match self.receive(&temp, body).await {
            Ok(digest) => digest,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        // The digest was computed while the bytes arrived: inspecting reads only the header.
        let temp2 = temp.clone();
        let inspected = tokio::task::spawn_blocking(move || inspect_with_digest(&temp2, sha256))
            .await
            .map_err(|e| CatalogError::Io(e.to_string()));
        let mut file = match inspected {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(match e {
                    EngineError::InvalidModel(why) => {
                        // The reader names the file; the client must not see our paths.
                        let prefix = format!("{}: ", temp.display());
                        let why = why.strip_prefix(&prefix).unwrap_or(&why);
                        invalid("body", format!("not a valid GGUF model: {why}"))
                    }
                    other => other.into(),
                });
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        if let Err(e) = tokio::fs::rename(&temp, &target).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(CatalogError::Io(format!("placing the model: {e}")));
        }
        file.id = name.to_string();
        file.path = target.clone();
        // Keep the digest under the final path, so the next start-up does not hash it again.
        let (cache, placed, digest) =
            (self.hash_cache.clone(), target.clone(), file.sha256.clone());
        let remembered =
            tokio::task::spawn_blocking(move || remember_digest(&cache, &placed, &digest)).await;
        if !matches!(remembered, Ok(Ok(()))) {
            tracing::warn!(model = %name, "could not cache the uploaded model's digest");
        }
        if let Err(e) = self.store.append(ctx, vec![registered(&file)]).await {
            let _ = tokio::fs::remove_file(&target).await;
            return Err(e.into());
        }
        self.files
            .write()
            .expect("catalog lock")
            .insert(file.id.clone(), file);
        self.resolve(name)
    }

    /// Writes the body to `temp` and returns its sha256, computed on the way.
    async fn receive<S>(&self, temp: &Path, mut body: S) -> Result<String, CatalogError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let mut out = tokio::fs::File::create(temp)
            .await
            .map_err(|e| CatalogError::Io(format!("creating upload file: {e}")))?;
        let mut total: u64 = 0;
        let mut head: Vec<u8> = Vec::with_capacity(4);
        let mut hasher = Sha256::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| CatalogError::Io(format!("reading upload: {e}")))?;
            total += chunk.len() as u64;
            if total > self.max_upload_bytes {
                return Err(CatalogError::TooLarge(self.max_upload_bytes));
            }
            if head.len() < 4 {
                let need = 4 - head.len();
                head.extend_from_slice(&chunk[..need.min(chunk.len())]);
                if head.len() == 4 && !is_gguf(&head) {
                    return Err(invalid("body", "not a GGUF file (bad magic bytes)"));
                }
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| CatalogError::Io(format!("writing upload: {e}")))?;
        }
        if head.len() < 4 {
            return Err(invalid("body", "not a GGUF file (too short)"));
        }
        out.sync_all()
            .await
            .map_err(|e| CatalogError::Io(format!("syncing upload: {e}")))?;
        Ok(hex::encode(hasher.finalize()))
    }

    pub async fn update(
        &self,
        _cap: &Granted<perm::WriteModels>,
        ctx: &EventContext,
        id_or_alias: &str,
        patch: ModelPatch,
    ) -> Result<ModelView, CatalogError> {
        let _guard = self.write_lock.lock().await;
        let model = self.resolve(id_or_alias)?;
        if let Some(aliases) = &patch.aliases {
            for a in aliases {
                if !valid_name(a) {
                    return Err(invalid(
                        "aliases",
                        format!("alias {a:?} is not a valid name"),
                    ));
                }
                let taken_by_id = a != &model.record.id && models::get(&self.store, a)?.is_some();
                let taken_by_alias =
                    models::by_alias(&self.store, a)?.is_some_and(|m| m.id != model.record.id);
                if taken_by_id || taken_by_alias {
                    return Err(CatalogError::Conflict(format!("alias {a:?} is taken")));
                }
            }
        }
        if let Some(d) = &patch.defaults {
            d.validate()
                .map_err(|e| invalid("defaults", e.to_string()))?;
        }
        // A model's defaults are configuration: stop strings are recorded with their text.
        let defaults = patch.defaults.as_ref().map(|d| d.record(true));
        self.store
            .append(
                ctx,
                vec![Event::ModelUpdated(ev::ModelUpdated {
                    model_id: model.record.id.clone(),
                    aliases: patch.aliases,
                    defaults,
                    enabled: patch.enabled,
                })],
            )
            .await?;
        self.resolve(&model.record.id)
    }

    /// Deletes the model file and its record. While requests run on it this is a conflict,
    /// unless `force`, which cancels them.
    pub async fn delete(
        &self,
        _cap: &Granted<perm::DeleteModels>,
        ctx: &EventContext,
        id_or_alias: &str,
        force: bool,
    ) -> Result<(), CatalogError> {
        let _guard = self.write_lock.lock().await;
        let model = self.resolve(id_or_alias)?;
        let active = self.engine.active_requests(&model.file.id);
        if active > 0 && !force {
            return Err(CatalogError::Conflict(format!(
                "{active} request(s) are running on model {:?}; retry later or pass force=true to cancel them",
                model.record.id
            )));
        }
        self.engine.unload(&model.file.id);
        self.store
            .append(
                ctx,
                vec![Event::ModelDeleted(ev::ModelDeleted {
                    model_id: model.record.id.clone(),
                    forced: force && active > 0,
                })],
            )
            .await?;
        self.files
            .write()
            .expect("catalog lock")
            .remove(&model.file.id);
        if let Err(e) = tokio::fs::remove_file(&model.file.path).await {
            tracing::warn!(model = %model.record.id, error = %e, "model file could not be removed");
        }
        Ok(())
    }
}

fn registered(f: &ModelFile) -> Event {
    Event::ModelRegistered(ev::ModelRegistered {
        model_id: f.id.clone(),
        file_name: f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: f.sha256.clone(),
        size_bytes: f.size_bytes,
    })
}

/// The JSON of a model's metadata for clients.
pub fn metadata_json(f: &ModelFile) -> Value {
    serde_json::json!({
        "architecture": f.metadata.architecture,
        "name": f.metadata.name,
        "parameter_count": f.metadata.parameter_count,
        "context_length": f.metadata.context_length,
        "quantization": f.metadata.quantization,
        "has_chat_template": f.metadata.chat_template.is_some(),
    })
}
