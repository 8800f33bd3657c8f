//! Registered models (deleted ones removed) and an alias index.

use super::*;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

pub const KS: &str = "models";
pub const KS_ALIASES: &str = "model_aliases";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: String,
    pub file_name: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub aliases: Vec<String>,
    /// Default sampling parameters (a JSON object).
    pub defaults: Value,
    pub enabled: bool,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct ModelsProjection;

fn drop_aliases(tx: &mut ProjectionTx<'_>, m: &ModelRecord) -> Result<(), EventError> {
    for a in &m.aliases {
        // Only drop an alias that still points at this model.
        if tx.get(KS_ALIASES, a.as_bytes())?.as_deref() == Some(m.id.as_bytes()) {
            tx.delete(KS_ALIASES, a.as_bytes())?;
        }
    }
    Ok(())
}

impl Projection for ModelsProjection {
    fn name(&self) -> &'static str {
        "models"
    }
    fn reads_payload(&self) -> bool {
        false
    }
    fn keyspaces(&self) -> &'static [&'static str] {
        &[KS, KS_ALIASES]
    }
    fn apply(
        &self,
        tx: &mut ProjectionTx<'_>,
        env: &Envelope,
        event: &Event,
    ) -> Result<(), EventError> {
        match event {
            Event::ModelRegistered(e) => {
                let m = ModelRecord {
                    id: e.model_id.clone(),
                    file_name: e.file_name.clone(),
                    sha256: e.sha256.clone(),
                    size_bytes: e.size_bytes,
                    aliases: Vec::new(),
                    defaults: Value::Object(Default::default()),
                    enabled: true,
                    registered_at: env.ts,
                    updated_at: env.ts,
                };
                tx.put_json(KS, e.model_id.as_bytes(), &m)?;
            }
            Event::ModelUpdated(e) => {
                if let Some(mut m) = tx.get_json::<ModelRecord>(KS, e.model_id.as_bytes())? {
                    if let Some(aliases) = &e.aliases {
                        drop_aliases(tx, &m)?;
                        for a in aliases {
                            tx.put(KS_ALIASES, a.as_bytes(), m.id.as_bytes())?;
                        }
                        m.aliases = aliases.clone();
                    }
                    if let Some(d) = e.defaults.as_ref().and_then(|d| d.to_plain_json()) {
                        m.defaults = d;
                    }
                    if let Some(en) = e.enabled {
                        m.enabled = en;
                    }
                    m.updated_at = env.ts;
                    tx.put_json(KS, e.model_id.as_bytes(), &m)?;
                }
            }
            Event::ModelDeleted(e) => {
                if let Some(m) = tx.get_json::<ModelRecord>(KS, e.model_id.as_bytes())? {
                    drop_aliases(tx, &m)?;
                }
                tx.delete(KS, e.model_id.as_bytes())?;
            }
            _ => {}
        }
        Ok(())
    }
}

pub fn get(store: &EventStore, model_id: &str) -> Result<Option<ModelRecord>, EventError> {
    read_json(store, KS, model_id.as_bytes())
}

pub fn by_alias(store: &EventStore, alias: &str) -> Result<Option<ModelRecord>, EventError> {
    match store.projection_get(KS_ALIASES, alias.as_bytes())? {
        None => Ok(None),
        Some(id) => read_json(store, KS, &id),
    }
}

pub fn list(store: &EventStore) -> Result<Vec<ModelRecord>, EventError> {
    scan_json(store, KS, b"")
}
